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
