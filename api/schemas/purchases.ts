import { Type, type Static } from '@sinclair/typebox'
import { Int32Schema, UuidSchema } from './common'

export const CreatePurchaseSchema = Type.Object({
  quantity: Int32Schema(1, 'number of tickets to buy'),
  user_id: UuidSchema,
}, { additionalProperties: false })
export type CreatePurchase = Static<typeof CreatePurchaseSchema>

/** Optional `Idempotency-Key` (API.md): 1 to 255 printable ASCII characters. */
export const PurchaseHeadersSchema = Type.Object({
  'idempotency-key': Type.Optional(Type.String({
    minLength: 1,
    maxLength: 255,
    pattern: '^[\\x20-\\x7E]+$',
    description: 'a retry with the same key, option and user returns the first attempt\'s outcome and never buys twice (kept IDEMPOTENCY_KEY_TTL_HOURS, 24 h by default)',
  })),
})

export const PurchaseParamsSchema = Type.Object({
  id: UuidSchema,
})

export const PurchaseStatusParamsSchema = Type.Object({
  id: UuidSchema,
  purchase_id: UuidSchema,
})

/** A committed purchase (201). */
export const PurchaseSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  user_id: UuidSchema,
  quantity: Type.Integer(),
  status: Type.Literal('succeeded'),
  created_at: Type.String({ format: 'date-time' }),
}, { $id: 'Purchase' })

/** Not enough tickets (409): nothing was bought. */
export const NotEnoughTicketsSchema = Type.Object({
  statusCode: Type.Literal(409),
  error: Type.String(),
  message: Type.String(),
  code: Type.Literal('NOT_ENOUGH_TICKETS'),
  requested: Type.Integer(),
  available: Type.Integer(),
  purchase_id: UuidSchema,
}, { $id: 'NotEnoughTickets' })

/** A purchase refused before or when it was applied (422): nothing was bought. */
export const PurchaseRefusedSchema = Type.Object({
  statusCode: Type.Literal(422),
  error: Type.String(),
  message: Type.String(),
  code: Type.Union([Type.Literal('QUANTITY_OVER_LIMIT'), Type.Literal('IDEMPOTENCY_KEY_REUSED'), Type.Literal('PURCHASE_UNPROCESSABLE')]),
  requested: Type.Optional(Type.Integer()),
  limit: Type.Optional(Type.Integer({ description: 'for QUANTITY_OVER_LIMIT: the most tickets one purchase may buy' })),
  purchase_id: Type.Optional(UuidSchema),
}, { $id: 'PurchaseRefused' })

/** Queued, outcome not known within the wait limit (202). */
export const PendingPurchaseSchema = Type.Object({
  id: UuidSchema,
  status: Type.Literal('pending'),
}, { $id: 'PendingPurchase' })

/** A purchase's outcome, as the status route shows it. */
export const PurchaseStatusSchema = Type.Object({
  id: UuidSchema,
  ticket_option_id: UuidSchema,
  status: Type.Union([Type.Literal('pending'), Type.Literal('succeeded'), Type.Literal('rejected')]),
  user_id: Type.Optional(UuidSchema),
  quantity: Type.Optional(Type.Integer()),
  created_at: Type.Optional(Type.String({ format: 'date-time' })),
  reason: Type.Optional(Type.String({ description: 'why a purchase was rejected: not_enough_tickets, quantity_over_limit, unprocessable or not_queued' })),
  available: Type.Optional(Type.Integer({ description: 'tickets left when a rejection was decided' })),
}, { $id: 'PurchaseStatus' })
