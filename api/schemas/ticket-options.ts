import { Type, type Static } from '@sinclair/typebox'
import { Int32Schema, UuidSchema } from './common'

// No control characters (PostgreSQL rejects NUL, and they make names unreadable);
// at least one non-space character.
const NAME_PATTERN = '^[^\\u0000-\\u001F\\u007F]*[^\\s\\u0000-\\u001F\\u007F][^\\u0000-\\u001F\\u007F]*$'
// Line breaks and tabs are fine in a description; other control characters are not.
const DESC_PATTERN = '^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F]*$'

/** A limit: absent or null means none (API.md "Limits"). */
const LimitSchema = (description: string) => Type.Optional(Type.Union([Int32Schema(1, description), Type.Null()]))

export const CreateTicketOptionSchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: NAME_PATTERN, description: 'not blank, at most 200 characters, no control characters' }),
  desc: Type.Optional(Type.String({ maxLength: 2000, pattern: DESC_PATTERN, description: 'at most 2000 characters; missing means ""' })),
  allocation: Int32Schema(0, 'number of tickets to sell'),
  max_per_purchase: LimitSchema('most tickets one purchase or hold may take (absent or null: no limit)'),
  max_per_user: LimitSchema('most tickets one user may have bought (not cancelled) plus held at once (absent or null: no limit)'),
}, { additionalProperties: false })
export type CreateTicketOption = Static<typeof CreateTicketOptionSchema>

export const TicketOptionSchema = Type.Object({
  id: UuidSchema,
  name: Type.String(),
  desc: Type.String(),
  allocation: Type.Integer({ minimum: 0, description: 'tickets still available' }),
  max_per_purchase: Type.Optional(Type.Integer({ description: 'present only when set' })),
  max_per_user: Type.Optional(Type.Integer({ description: 'present only when set' })),
}, { $id: 'TicketOption' })

/** GET /ticket_options/:id/ledger: where every ticket of the option is, from the stored records. */
export const LedgerSchema = Type.Object({
  ticket_option_id: UuidSchema,
  initial_allocation: Type.Integer(),
  available: Type.Integer(),
  held: Type.Integer({ description: 'tickets of active holds' }),
  sold: Type.Integer({ description: 'tickets of succeeded purchases not cancelled' }),
  cancelled: Type.Integer({ description: 'tickets given back by cancellations' }),
  balanced: Type.Boolean({ description: 'initial_allocation = available + held + sold' }),
}, { $id: 'Ledger' })

export const TicketOptionParamsSchema = Type.Object({
  id: UuidSchema,
})

/** GET /ticket_options/:id/queue: how long the line is now, for a waiting-room page. */
export const QueueLineSchema = Type.Object({
  waiting: Type.Integer({ minimum: 0, description: 'requests queued or being applied' }),
  applied_per_second: Type.Number({ minimum: 0, description: 'the option\'s recent rate of applied requests' }),
  estimated_wait_ms: Type.Union([Type.Integer({ minimum: 0 }), Type.Null()], { description: 'for a buyer joining now; null while the rate is unknown' }),
}, { $id: 'QueueLine' })
