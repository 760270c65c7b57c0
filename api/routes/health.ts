/**
 * GET /health/live and GET /health/ready (API.md "Operator routes"), for
 * load balancers, compose and orchestrator probes. Readiness asks PostgreSQL,
 * and Redis when the queues are on it, each time with a short timeout, and
 * answers 503 with Retry-After (through the root error handler) while one
 * does not answer.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { checkReadiness, isReady, readinessChecks, unavailableDependencies } from '../../shared/health-checks'
import { ServiceUnavailableError } from '../../shared/error-catalogue'
import { errorResponse, jsonResponse, retryAfterHeader } from '../schemas/responses'
import { LivenessSchema, ReadinessSchema } from '../schemas/health'

const healthRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { db, queueBackend } = app

  // Probes come every few seconds: only their failures are worth a log line.
  app.get('/health/live', {
    logLevel: 'warn',
    schema: {
      tags: ['health'],
      summary: 'The process is up',
      response: { 200: jsonResponse('The process is up', LivenessSchema) },
    },
  }, async () => ({ status: 'ok' as const }))

  app.get('/health/ready', {
    logLevel: 'warn',
    schema: {
      tags: ['health'],
      summary: 'PostgreSQL (and Redis, when the queues are on it) answer; 503 with Retry-After otherwise',
      response: {
        200: jsonResponse('The stores in use answer', ReadinessSchema),
        503: errorResponse('PostgreSQL or Redis does not answer (SERVICE_UNAVAILABLE)', retryAfterHeader),
      },
    },
  }, async () => {
    const readiness = await checkReadiness(db, queueBackend)
    if (!isReady(readiness)) throw new ServiceUnavailableError(unavailableDependencies(readiness))
    return { status: 'ok' as const, checks: readinessChecks(readiness) }
  })
}

export default healthRoutes
