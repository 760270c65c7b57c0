import { Type, type Static } from '@sinclair/typebox'

/** GET /health/live: the process is up and serving HTTP. */
export const LivenessSchema = Type.Object({
  status: Type.Literal('ok'),
}, { description: 'The process is up' })
export type Liveness = Static<typeof LivenessSchema>

/** GET /health/ready: PostgreSQL, and Redis when the queues are on it, answered just now. */
export const ReadinessSchema = Type.Object({
  status: Type.Literal('ok'),
  checks: Type.Object({
    postgres: Type.Literal('ok'),
    redis: Type.Optional(Type.Literal('ok', { description: 'present when the queues are on Redis' })),
  }),
}, { description: 'The stores in use answer' })
export type Readiness = Static<typeof ReadinessSchema>
