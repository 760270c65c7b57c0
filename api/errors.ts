/**
 * The catalogue of errors the API answers with deliberately: a stable `code`,
 * a status and a message, in the body shape Fastify uses
 * (`{statusCode, error, message, code}`, see API.md "Errors").
 */
import createError from '@fastify/error'

export const TicketOptionNotFoundError = createError<[string]>('TICKET_OPTION_NOT_FOUND', 'Ticket option %s not found', 404)
export const PurchaseNotFoundError = createError<[string]>('PURCHASE_NOT_FOUND', 'Purchase %s not found', 404)
export const RouteNotFoundError = createError<[string, string]>('ROUTE_NOT_FOUND', 'Route %s %s not found', 404)
/** The queue dashboard needs HTTP basic auth (answered with a WWW-Authenticate challenge). */
export const DashboardUnauthorizedError = createError('DASHBOARD_UNAUTHORIZED', 'The queue dashboard needs valid credentials', 401)
/** The queue dashboard only reads: retrying a completed purchase job would buy again. */
export const DashboardReadOnlyError = createError<[string]>('DASHBOARD_READ_ONLY', 'The queue dashboard is read-only; %s is refused', 403)
/** A dependency (PostgreSQL or Redis) is down; the client may retry after `Retry-After`. */
export const ServiceUnavailableError = createError<[string]>('SERVICE_UNAVAILABLE', '%s is unavailable, try again shortly', 503)

/** Seconds a client should wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 1
/** The option's queue holds QUEUE_MAX_WAITING purchases already; nothing was added. Answered with Retry-After. */
export const QueueFullError = createError('QUEUE_FULL', 'Too many purchases are waiting for this ticket option, try again shortly', 503)
/** An Idempotency-Key sent again with a different request body (API.md); nothing was bought by this request. */
export const IdempotencyKeyReusedError = createError('IDEMPOTENCY_KEY_REUSED', 'This Idempotency-Key was already used with a different request body', 422)
/** RATE_LIMIT_PURCHASES_PER_MINUTE exceeded by this client; answered with Retry-After. */
export const RateLimitedError = createError<[string]>('RATE_LIMITED', 'Too many purchase requests, retry in %s', 429)
