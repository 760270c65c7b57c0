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
import sse from '@fastify/sse'
import type { Config, TrustProxy } from '../shared/config'
import { loggerOptions } from '../shared/logger'
import { clientErrorHandler, frameworkErrorHandler } from './client-errors'
import { requestLogger } from './request-logger'
import bodyDeadline from './plugins/body-deadline'
import dashboard from './plugins/dashboard'
import errorHandler from './plugins/error-handler'
import gracefulClose from './plugins/graceful-close'
import metrics from './plugins/metrics'
import openapi from './plugins/openapi'
import purchasing from './plugins/purchasing'
import rateLimit from './plugins/rate-limit'
import exampleRoutes from './routes/examples'
import healthRoutes from './routes/health'
import metricsRoutes from './routes/metrics'
import purchaseRoutes from './routes/purchases'
import reservationRoutes from './routes/reservations'
import ticketOptionRoutes from './routes/ticket-options'
import { ErrorSchema } from './schemas/common'
import {
  CancelledPurchaseSchema, NotEnoughTicketsSchema, PendingPurchaseSchema, PurchaseRefusedSchema, PurchaseSchema, PurchaseStatusSchema, StateConflictSchema,
} from './schemas/purchases'
import { PendingReservationSchema, ReservationSchema } from './schemas/reservations'
import { LedgerSchema, QueueLineSchema, TicketOptionSchema } from './schemas/ticket-options'

/** Heartbeat of event streams (ms). */
const SSE_HEARTBEAT_MS = 15_000

/** How often Node looks for requests past REQUEST_TIMEOUT_MS (ms). */
const REQUEST_TIMEOUT_CHECK_MS = 500

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** Takes the caller's X-Request-Id when it is sane, so one purchase can be followed across systems. */
function requestId (req: IncomingMessage): string {
  const header = req.headers['x-request-id']
  return typeof header === 'string' && REQUEST_ID.test(header) ? header : randomUUID()
}

/** A hop count as the function Fastify applies to numbers (its types accept no number). */
function fastifyTrustProxy (trust: TrustProxy): boolean | string[] | ((address: string, hop: number) => boolean) {
  return typeof trust === 'number' ? (_address, hop) => hop < trust : trust
}

export interface BuildAppOptions {
  /** Overrides the pino options from config (tests pass `false`). */
  logger?: FastifyServerOptions['logger']
}

export async function buildApp (config: Config, options: BuildAppOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? loggerOptions(config, 'api'),
    genReqId: requestId,
    childLoggerFactory: requestLogger,
    requestIdHeader: false,
    bodyLimit: config.bodyLimitBytes,
    // REQUEST_TIMEOUT_MS, longer than PURCHASE_WAIT_MS (checked in shared/config.ts): a request
    // must arrive within it (else 408, api/client-errors.ts) and a socket may sit idle that long.
    requestTimeout: config.requestTimeoutMs,
    connectionTimeout: config.requestTimeoutMs,
    // Node checks requestTimeout only this often (30 s by default), which would let a slow client hold a socket far longer.
    http: { connectionsCheckingInterval: REQUEST_TIMEOUT_CHECK_MS },
    clientErrorHandler,
    frameworkErrors: frameworkErrorHandler,
    // API.md: types are strict, nothing is coerced, unknown fields are refused.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
    // api/plugins/graceful-close.ts answers requests that arrive while closing, in the service's error body.
    return503OnClosing: false,
    // TRUST_PROXY: whose X-Forwarded-For to believe, so request.ip (and the rate limit) is the client's.
    trustProxy: fastifyTrustProxy(config.trustProxy),
  }).withTypeProvider<TypeBoxTypeProvider>()

  // Only JSON bodies are accepted: anything else is a 415 (API.md "Errors").
  app.removeContentTypeParser(['text/plain'])

  app.addHook('onRequest', (request, reply, done) => { reply.header('x-request-id', request.id); done() })

  for (const schema of [
    ErrorSchema, TicketOptionSchema, LedgerSchema, QueueLineSchema, PurchaseSchema, CancelledPurchaseSchema, NotEnoughTicketsSchema, PurchaseRefusedSchema,
    StateConflictSchema, PendingPurchaseSchema, PurchaseStatusSchema, ReservationSchema, PendingReservationSchema,
  ]) {
    app.addSchema(schema)
  }

  await app.register(errorHandler)
  await app.register(gracefulClose)
  await app.register(bodyDeadline, { timeoutMs: config.bodyTimeoutMs })
  // Before the routes: its onRoute hook limits the routes that ask for it.
  await app.register(rateLimit, { config })
  await app.register(metrics)
  // Before the routes: @fastify/swagger collects them as they are registered.
  await app.register(openapi)
  await app.register(purchasing, { config })
  // Server-Sent Events for the events routes (reply.sse); a heartbeat comment every 15 s keeps
  // proxies from closing a quiet stream and tells a stream whose client is gone.
  await app.register(sse, { heartbeatInterval: SSE_HEARTBEAT_MS })
  await app.register(dashboard, { config })

  await app.register(ticketOptionRoutes)
  await app.register(purchaseRoutes)
  await app.register(reservationRoutes)
  await app.register(healthRoutes)
  await app.register(metricsRoutes)
  if (config.examples) await app.register(exampleRoutes)

  return app
}
