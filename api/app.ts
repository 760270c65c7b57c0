/**
 * Builds the API as a Fastify instance without listening (tests use
 * `app.inject`; api/server.ts listens). Plugins and routes are registered
 * explicitly, in load order: third-party and cross-cutting plugins first,
 * because the routes depend on them.
 */
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import type { Config } from '../shared/config'
import { loggerOptions } from '../shared/logger'
import dashboard from './plugins/dashboard'
import errorHandler from './plugins/error-handler'
import gracefulClose from './plugins/graceful-close'
import purchasing from './plugins/purchasing'
import healthRoutes from './routes/health'
import purchaseRoutes from './routes/purchases'
import ticketOptionRoutes from './routes/ticket-options'
import { ErrorSchema } from './schemas/common'
import { NotEnoughTicketsSchema, PendingPurchaseSchema, PurchaseSchema, PurchaseStatusSchema } from './schemas/purchases'
import { TicketOptionSchema } from './schemas/ticket-options'

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** Takes the caller's X-Request-Id when it is sane, so one purchase can be followed across systems. */
function requestId (req: IncomingMessage): string {
  const header = req.headers['x-request-id']
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID()
}

export interface BuildAppOptions {
  /** Overrides the pino options from config (tests pass `false`). */
  logger?: FastifyServerOptions['logger']
}

export async function buildApp (config: Config, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? loggerOptions(config, 'api'),
    genReqId: requestId,
    requestIdHeader: false,
    bodyLimit: 16 * 1024,
    // API.md: types are strict, nothing is coerced, unknown fields are refused.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    return503OnClosing: true,
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Only JSON bodies are accepted: anything else is a 415 (API.md "Errors").
  app.removeContentTypeParser(['text/plain'])

  app.addHook('onRequest', async (request, reply) => { reply.header('x-request-id', request.id) })

  for (const schema of [ErrorSchema, TicketOptionSchema, PurchaseSchema, NotEnoughTicketsSchema, PendingPurchaseSchema, PurchaseStatusSchema]) {
    app.addSchema(schema)
  }

  await app.register(errorHandler)
  await app.register(gracefulClose)
  await app.register(purchasing, { config })
  await app.register(dashboard, { config })

  await app.register(ticketOptionRoutes)
  await app.register(purchaseRoutes)
  await app.register(healthRoutes)

  return app
}
