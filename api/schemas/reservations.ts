import { Type, type Static } from '@sinclair/typebox'
import { Int32Schema, UuidSchema } from './common'
import { placeFields } from './purchases'

/** POST /ticket_options/:id/reservations (API.md "Holds"). */
export const CreateReservationSchema = Type.Object({
  quantity: Int32Schema(1, 'number of tickets to hold'),
  user_id: UuidSchema,
  hold_seconds: Type.Optional(Type.Integer({ minimum: 10, maximum: 3600, description: 'how long the tickets are held (default 600)' })),
}, { additionalProperties: false })
export type CreateReservation = Static<typeof CreateReservationSchema>

export const ReservationParamsSchema = Type.Object({
  id: UuidSchema,
  reservation_id: UuidSchema,
})

/** A reservation, as its routes answer it. */
export const ReservationSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  status: Type.Union(['pending', 'held', 'confirmed', 'released', 'expired', 'rejected'].map((s) => Type.Literal(s))),
  user_id: Type.Optional(UuidSchema),
  quantity: Type.Optional(Type.Integer()),
  expires_at: Type.Optional(Type.String({ format: 'date-time', description: 'an unconfirmed hold expires then, and its tickets are available again' })),
  created_at: Type.Optional(Type.String({ format: 'date-time' })),
  purchase_id: Type.Optional(UuidSchema),
  reason: Type.Optional(Type.String({ description: 'why a hold was rejected: not_enough_tickets, quantity_over_limit, user_limit_reached, unprocessable or not_queued' })),
  ...placeFields,
}, { $id: 'Reservation' })

/** Queued, outcome not known within the wait limit (202). */
export const PendingReservationSchema = Type.Object({
  id: UuidSchema,
  status: Type.Literal('pending'),
  ...placeFields,
}, { $id: 'PendingReservation' })
