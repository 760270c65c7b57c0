import { Type, type Static } from '@sinclair/typebox'
import { Int32Schema, UuidSchema } from './common'

export const CreatePurchaseSchema = Type.Object({
  quantity: Int32Schema(1, 'number of tickets to buy'),
  user_id: UuidSchema,
}, { additionalProperties: false })
export type CreatePurchase = Static<typeof CreatePurchaseSchema>

/** Optional `Idempotency-Key` (API.md): 1 to 255 printable ASCII characters. */
/** Where a queued request stands (API.md "Waiting in line"). */
export const placeFields = {
  position: Type.Optional(Type.Integer({ minimum: 0, description: 'requests of the option ahead of it; 0 = being applied now' })),
  estimated_wait_ms: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'from the option\'s recent rate of applied requests; null while unknown' })),
}

export const PurchaseHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    pattern: '^[\\x20-\\x7E]+$',
    description: 'a retry with the same key, option and user returns the first attempt\'s outcome and never buys twice (kept IDEMPOTENCY_KEY_TTL_HOURS, 24 h by default)',
  })),
  prefer: Type.Optional(Type.String({
    maxLength: 1000,
    description: 'RFC 7240; `respond-async`: answer 202 at once with the position in line instead of waiting for the outcome (answered with Preference-Applied)',
  })),
})

export const PurchaseParamsSchema = Type.Object({
  id: UuidSchema,
})

export const PurchaseStatusParamsSchema = Type.Object({
  id: UuidSchema,
  purchase_id: UuidSchema,
})

/** A committed purchase (201); one made by confirming a hold also names the hold. */
export const PurchaseSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  user_id: UuidSchema,
  quantity: Type.Integer(),
  status: Type.Literal('succeeded'),
  created_at: Type.String({ format: 'date-time' }),
  reservation_id: Type.Optional(UuidSchema),
}, { $id: 'Purchase' })

/** A cancelled purchase (200). */
export const CancelledPurchaseSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  user_id: UuidSchema,
  quantity: Type.Integer(),
  status: Type.Literal('cancelled'),
  created_at: Type.String({ format: 'date-time' }),
  cancelled_at: Type.String({ format: 'date-time' }),
  reservation_id: Type.Optional(UuidSchema),
}, { $id: 'CancelledPurchase' })

/** Whose purchase or hold it is: confirm, release and cancel act only for its user. */
export const UserBodySchema = Type.Object({
  user_id: UuidSchema,
}, { additionalProperties: false })

/** A request refused because of the state of what it names (409 RESERVATION_NOT_ACTIVE, NOT_CANCELLABLE). */
export const StateConflictSchema = Type.Object({
  statusCode: Type.Literal(409),
  error: Type.String(),
  message: Type.String(),
  code: Type.Union([Type.Literal('RESERVATION_NOT_ACTIVE'), Type.Literal('NOT_CANCELLABLE')]),
  status: Type.String({ description: 'the state it is in' }),
}, { $id: 'StateConflict' })

/** Refused (409): not enough tickets, or the user's limit; nothing was bought or held. */
export const NotEnoughTicketsSchema = Type.Object({
  statusCode: Type.Literal(409),
  error: Type.String(),
  message: Type.String(),
  code: Type.Union([Type.Literal('NOT_ENOUGH_TICKETS'), Type.Literal('USER_LIMIT_REACHED')]),
  requested: Type.Integer(),
  available: Type.Optional(Type.Integer({ description: 'NOT_ENOUGH_TICKETS: tickets left when it was decided' })),
  limit: Type.Optional(Type.Integer({ description: 'USER_LIMIT_REACHED: max_per_user' })),
  used: Type.Optional(Type.Integer({ description: 'USER_LIMIT_REACHED: the user\'s tickets bought and held when it was decided' })),
  purchase_id: Type.Optional(UuidSchema),
  reservation_id: Type.Optional(UuidSchema),
}, { $id: 'NotEnoughTickets' })

/** A purchase refused before or when it was applied (422): nothing was bought. */
export const PurchaseRefusedSchema = Type.Object({
  statusCode: Type.Literal(422),
  error: Type.String(),
  message: Type.String(),
  code: Type.Union([Type.Literal('QUANTITY_OVER_LIMIT'), Type.Literal('IDEMPOTENCY_KEY_REUSED'), Type.Literal('PURCHASE_UNPROCESSABLE')]),
  requested: Type.Optional(Type.Integer()),
  limit: Type.Optional(Type.Integer({ description: 'for QUANTITY_OVER_LIMIT: the option\'s max_per_purchase' })),
  purchase_id: Type.Optional(UuidSchema),
  reservation_id: Type.Optional(UuidSchema),
}, { $id: 'PurchaseRefused' })

/** Queued, outcome not known within the wait limit (202). */
export const PendingPurchaseSchema = Type.Object({
  id: UuidSchema,
  status: Type.Literal('pending'),
  ...placeFields,
}, { $id: 'PendingPurchase' })

/** A purchase's outcome, as the status route shows it. */
export const PurchaseStatusSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  status: Type.Union([Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('rejected'), Type.Literal('cancelled')]),
  user_id: Type.Optional(UuidSchema),
  quantity: Type.Optional(Type.Integer()),
  created_at: Type.Optional(Type.String({ format: 'date-time' })),
  cancelled_at: Type.Optional(Type.String({ format: 'date-time' })),
  reservation_id: Type.Optional(UuidSchema),
  reason: Type.Optional(Type.String({ description: 'why a purchase was rejected: not_enough_tickets, quantity_over_limit, user_limit_reached, unprocessable or not_queued' })),
  ...placeFields,
  available: Type.Optional(Type.Integer({ description: 'tickets left when a rejection was decided' })),
}, { $id: 'PurchaseStatus' })
