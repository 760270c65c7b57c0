import { Type, type Static } from '@sinclair/typebox'
import { Int32Schema, UuidSchema } from './common'

// No control characters (PostgreSQL rejects NUL, and they make names unreadable);
// at least one non-space character.
const NAME_PATTERN = '^[^\\u0000-\\u001F\\u007F]*[^\\s\\u0000-\\u001F\\u007F][^\\u0000-\\u001F\\u007F]*$'
// Line breaks and tabs are fine in a description; other control characters are not.
const DESC_PATTERN = '^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F]*$'

export const CreateTicketOptionSchema = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: NAME_PATTERN, description: 'not blank, at most 200 characters, no control characters' }),
  desc: Type.Optional(Type.String({ maxLength: 2000, pattern: DESC_PATTERN, description: 'at most 2000 characters; missing means ""' })),
  allocation: Int32Schema(0, 'number of tickets to sell'),
}, { additionalProperties: false })
export type CreateTicketOption = Static<typeof CreateTicketOptionSchema>

export const TicketOptionSchema = Type.Object({
  id: UuidSchema,
  name: Type.String(),
  desc: Type.String(),
  allocation: Type.Integer({ minimum: 0, description: 'tickets still available' }),
}, { $id: 'TicketOption' })

export const TicketOptionParamsSchema = Type.Object({
  id: UuidSchema,
})
