/**
 * Primitives shared by the route schemas. These schemas are the validation
 * and, through @fastify/swagger, the OpenAPI document. Keep in sync with API.md.
 */
import { Type } from '@sinclair/typebox'

/** A UUID in canonical text form (either case; stored and answered lowercase). */
export const UuidSchema = Type.String({
  pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$',
  description: 'UUID in canonical text form',
  examples: ['406c1d05-bbb2-4e94-b183-7d208c2692e1'],
})

/** A PostgreSQL `integer` that is at least `minimum`. */
export const Int32Schema = (minimum: number, description: string) => Type.Integer({ minimum, maximum: 2147483647, description })

/** The body of every error (Fastify's shape). */
export const ErrorSchema = Type.Object({
  statusCode: Type.Integer(),
  error: Type.String(),
  message: Type.String(),
  code: Type.String(),
}, { $id: 'Error', description: 'Error' })

export const errorRef = Type.Ref('Error')
