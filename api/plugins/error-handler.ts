/**
 * One root error handler and the 404 handler. Deliberate 4xx errors and
 * validation errors pass through as they are; an unavailable dependency is a
 * 503 with Retry-After; anything else is logged with the request and the
 * client only sees "Internal Server Error" (no stack, SQL or internal names).
 * Every body is built by `errorBody` (shared/error-catalogue.ts).
 * @see https://fastify.dev/docs/latest/Reference/Errors/
 */
import type { FastifyError, FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { isTransientDbError } from '../../shared/db'
import { catalogueBody, errorBody, RETRY_AFTER_SECONDS } from '../../shared/error-catalogue'

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
      const body = status === 503
        ? errorBody(503, err.message, err.code ?? 'SERVICE_UNAVAILABLE')
        : catalogueBody('SERVICE_UNAVAILABLE', ['The database'])
      return reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS)).send(body)
    }
    request.log.error({ err, request: { method: request.method, url: request.url } }, 'unhandled error')
    return reply.code(500).send(catalogueBody('INTERNAL_SERVER_ERROR'))
  })

  app.setNotFoundHandler((request, reply) => {
    return reply.code(404).send(catalogueBody('ROUTE_NOT_FOUND', [request.method, request.url.split('?')[0] ?? '']))
  })
}

export default fp(errorHandlerPlugin, { name: 'error-handler' })
