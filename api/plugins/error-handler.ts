/**
 * One root error handler and the 404 handler. Deliberate 4xx errors and
 * validation errors pass through as they are; an unavailable dependency is a
 * 503 with Retry-After; anything else is logged with the request and the
 * client only sees "Internal Server Error" (no stack, SQL or internal names).
 * @see https://fastify.dev/docs/latest/Reference/Errors/
 */
import { STATUS_CODES } from 'node:http'
import type { FastifyError, FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { isTransientDbError } from '../../shared/db'
import { RETRY_AFTER_SECONDS, RouteNotFoundError } from '../errors'

export function errorBody (statusCode: number, message: string, code: string): Record<string, unknown> {
  return { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, code }
}

async function errorHandlerPlugin (app: FastifyInstance): Promise<void> {
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.validation !== undefined) {
      return reply.code(400).send(errorBody(400, err.message, err.code ?? 'FST_ERR_VALIDATION'))
    }
    const status = typeof err.statusCode === 'number' ? err.statusCode : 500
    if (status >= 400 && status < 500) {
      return reply.code(status).send(errorBody(status, err.message, err.code ?? 'BAD_REQUEST'))
    }
    if (status === 503 || isTransientDbError(err)) {
      request.log.warn({ err }, 'dependency unavailable')
      const message = status === 503 ? err.message : 'The database is unavailable, try again shortly'
      return reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS))
        .send(errorBody(503, message, status === 503 ? (err.code ?? 'SERVICE_UNAVAILABLE') : 'SERVICE_UNAVAILABLE'))
    }
    request.log.error({ err, request: { method: request.method, url: request.url } }, 'unhandled error')
    return reply.code(500).send(errorBody(500, 'Internal Server Error', 'INTERNAL_SERVER_ERROR'))
  })

  app.setNotFoundHandler((request, reply) => {
    const err = new RouteNotFoundError(request.method, request.url.split('?')[0] ?? '')
    return reply.code(404).send(errorBody(404, err.message, err.code))
  })
}

export default fp(errorHandlerPlugin, { name: 'error-handler' })
