/**
 * The catalogue of errors the API answers with deliberately: a stable `code`,
 * a status and a message, in the body shape Fastify uses
 * (`{statusCode, error, message, code}`, see API.md "Errors").
 */
import createError from '@fastify/error'

export const TicketOptionNotFoundError = createError<[string]>('TICKET_OPTION_NOT_FOUND', 'Ticket option %s not found', 404)
export const PurchaseNotFoundError = createError<[string]>('PURCHASE_NOT_FOUND', 'Purchase %s not found', 404)
export const RouteNotFoundError = createError<[string, string]>('ROUTE_NOT_FOUND', 'Route %s %s not found', 404)
/** A dependency (PostgreSQL or Redis) is down; the client may retry after `Retry-After`. */
export const ServiceUnavailableError = createError<[string]>('SERVICE_UNAVAILABLE', '%s is unavailable, try again shortly', 503)

/** Seconds a client should wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 1
