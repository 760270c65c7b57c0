/**
 * Every error this service answers with, in one place: a stable `code`, its
 * HTTP status and its message. The API (routes, root error handler, socket
 * and router errors, the dashboard) and the worker (its health server) build
 * every 4xx/5xx body with `errorBody`, in the shape Fastify uses:
 * `{statusCode, error, message, code}` plus fields of the error's own.
 * A purchase's recorded rejection `reason` maps to its code in
 * `REJECTION_CODES`, so NOT_ENOUGH_TICKETS is one case of many.
 *
 * Keep in sync with API.md ("Outcomes", "New error codes", "Errors") and the
 * table in README.md "What an answer means".
 * @see https://github.com/fastify/fastify-error
 */
import { STATUS_CODES } from 'node:http'
import createError from '@fastify/error'
import type { RejectionReason } from './purchases/sale-store'

interface CatalogueEntry {
  readonly status: number
  /** `%s` placeholders are filled with the error's arguments, in order */
  readonly message: string
}

export const ERRORS = {
  BAD_HTTP_REQUEST: { status: 400, message: 'Malformed HTTP request' },
  /** Fastify's router refused the URL; its own code is kept */
  FST_ERR_BAD_URL: { status: 400, message: 'The URL is not valid (bad percent-encoding)' },
  DASHBOARD_UNAUTHORIZED: { status: 401, message: 'The queue dashboard needs valid credentials' },
  /** retrying a completed purchase job would buy again */
  DASHBOARD_READ_ONLY: { status: 403, message: 'The queue dashboard is read-only; %s is refused' },
  TICKET_OPTION_NOT_FOUND: { status: 404, message: 'Ticket option %s not found' },
  PURCHASE_NOT_FOUND: { status: 404, message: 'Purchase %s not found' },
  RESERVATION_NOT_FOUND: { status: 404, message: 'Reservation %s not found' },
  ROUTE_NOT_FOUND: { status: 404, message: 'Route %s %s not found' },
  /** Node's REQUEST_TIMEOUT_MS: the request (headers and body) did not arrive in time */
  REQUEST_TIMEOUT: { status: 408, message: 'The request did not arrive in time' },
  /** BODY_TIMEOUT_MS: the body was trickled in too slowly */
  BODY_TIMEOUT: { status: 408, message: 'The request body did not arrive within %s ms' },
  NOT_ENOUGH_TICKETS: { status: 409, message: 'Not enough tickets: requested %s, available %s' },
  /** max_per_user: succeeded purchases plus active holds of one user */
  USER_LIMIT_REACHED: { status: 409, message: 'A user may buy or hold at most %s tickets of this option; this user has %s' },
  /** confirming or releasing a hold that is no longer held */
  RESERVATION_NOT_ACTIVE: { status: 409, message: 'The reservation is %s, no longer held' },
  /** cancelling a purchase that did not succeed, or is still pending */
  NOT_CANCELLABLE: { status: 409, message: 'The purchase is %s and cannot be cancelled' },
  FST_ERR_MAX_PARAM_LENGTH: { status: 414, message: 'A path segment of the URL is too long' },
  IDEMPOTENCY_KEY_REUSED: { status: 422, message: 'This Idempotency-Key was already used with a different request body' },
  /** max_per_purchase of the option */
  QUANTITY_OVER_LIMIT: { status: 422, message: 'At most %s tickets can be bought or held at once' },
  /** the worker could not apply it (data PostgreSQL refuses); recorded as rejected in its turn */
  PURCHASE_UNPROCESSABLE: { status: 422, message: 'This purchase could not be applied; nothing was bought' },
  RATE_LIMITED: { status: 429, message: 'Too many purchase requests, retry in %s' },
  HEADERS_TOO_LARGE: { status: 431, message: 'The request headers are too large' },
  INTERNAL_SERVER_ERROR: { status: 500, message: 'Internal Server Error' },
  SERVICE_UNAVAILABLE: { status: 503, message: '%s is unavailable, try again shortly' },
  QUEUE_FULL: { status: 503, message: 'Too many purchases are waiting for this ticket option, try again shortly' },
  SHUTTING_DOWN: { status: 503, message: 'The service is shutting down, try again shortly' },
} as const satisfies Record<string, CatalogueEntry>

export type ErrorCode = keyof typeof ERRORS

export function isErrorCode (code: string): code is ErrorCode {
  return Object.hasOwn(ERRORS, code)
}

/** Seconds a client should wait before retrying a 503 or a 429 (sent as Retry-After). */
export const RETRY_AFTER_SECONDS = 1

export interface ErrorBody {
  statusCode: number
  error: string
  message: string
  code: string
  [detail: string]: unknown
}

/** The one function that builds an error body; `details` are the error's own fields (`requested`, `limit`, ...). */
export function errorBody (statusCode: number, message: string, code: string, details: Record<string, unknown> = {}): ErrorBody {
  return { statusCode, error: STATUS_CODES[statusCode] ?? 'Error', message, code, ...details }
}

/** The message of a catalogue entry with its placeholders filled. */
export function catalogueMessage (code: ErrorCode, ...args: Array<string | number>): string {
  let i = 0
  return ERRORS[code].message.replace(/%s/g, () => String(args[i++] ?? ''))
}

/** The body of a catalogue entry. */
export function catalogueBody (code: ErrorCode, args: Array<string | number> = [], details: Record<string, unknown> = {}): ErrorBody {
  return errorBody(ERRORS[code].status, catalogueMessage(code, ...args), code, details)
}

/** A throwable error of the catalogue (answered by the API's root error handler). */
function thrown<Args extends unknown[] = []> (code: ErrorCode) {
  return createError<ErrorCode, number, Args>(code, ERRORS[code].message, ERRORS[code].status)
}

export const TicketOptionNotFoundError = thrown<[string]>('TICKET_OPTION_NOT_FOUND')
export const PurchaseNotFoundError = thrown<[string]>('PURCHASE_NOT_FOUND')
export const ReservationNotFoundError = thrown<[string]>('RESERVATION_NOT_FOUND')
export const IdempotencyKeyReusedError = thrown('IDEMPOTENCY_KEY_REUSED')
export const RateLimitedError = thrown<[string]>('RATE_LIMITED')
/** A dependency (PostgreSQL or Redis) is down; nothing was bought; answered with Retry-After. */
export const ServiceUnavailableError = thrown<[string]>('SERVICE_UNAVAILABLE')
/** The option's queue holds QUEUE_MAX_WAITING purchases already; nothing was added. Answered with Retry-After. */
export const QueueFullError = thrown('QUEUE_FULL')
export const BodyTimeoutError = thrown<[number]>('BODY_TIMEOUT')

/** The code a recorded rejection is answered with. */
export const REJECTION_CODES: Readonly<Record<RejectionReason, ErrorCode>> = {
  not_enough_tickets: 'NOT_ENOUGH_TICKETS',
  quantity_over_limit: 'QUANTITY_OVER_LIMIT',
  user_limit_reached: 'USER_LIMIT_REACHED',
  unprocessable: 'PURCHASE_UNPROCESSABLE',
  // A request voided after an ambiguous enqueue failure: the API answered 503 for it.
  not_queued: 'SERVICE_UNAVAILABLE',
}

/** A purchase or hold the worker rejected, as recorded. */
export interface Rejected {
  id: string
  quantity: number
  reason: string | null
  /** tickets left when it was decided */
  available: number | null
  /** for user_limit_reached: the user's tickets when it was decided */
  used: number | null
}

/** The option's limits, which QUANTITY_OVER_LIMIT and USER_LIMIT_REACHED name. */
export interface OptionLimits {
  maxPerPurchase: number | null
  maxPerUser: number | null
}

/**
 * The answer to a purchase or hold the worker rejected, by its reason: the
 * status and body, with the fields a client needs to decide what to do next.
 * `idField` names the rejected record: `purchase_id` or `reservation_id`.
 */
export function rejectionBody (rejected: Rejected, limits: OptionLimits, idField: 'purchase_id' | 'reservation_id' = 'purchase_id'): ErrorBody {
  const code = REJECTION_CODES[rejected.reason as RejectionReason] ?? 'PURCHASE_UNPROCESSABLE'
  const ids = { [idField]: rejected.id }
  switch (code) {
    case 'NOT_ENOUGH_TICKETS': {
      const available = rejected.available ?? 0
      return catalogueBody(code, [rejected.quantity, available], { requested: rejected.quantity, available, ...ids })
    }
    case 'QUANTITY_OVER_LIMIT':
      return quantityOverLimit(rejected.quantity, limits.maxPerPurchase ?? 0, ids)
    case 'USER_LIMIT_REACHED': {
      const limit = limits.maxPerUser ?? 0
      const used = rejected.used ?? 0
      return catalogueBody(code, [limit, used], { requested: rejected.quantity, limit, used, ...ids })
    }
    case 'SERVICE_UNAVAILABLE':
      return catalogueBody(code, ['The purchase queue'], ids)
    default:
      return catalogueBody(code, [], ids)
  }
}

/** QUANTITY_OVER_LIMIT, whether the API refused it before queueing or the worker did. */
export function quantityOverLimit (requested: number, limit: number, details: Record<string, unknown> = {}): ErrorBody {
  return catalogueBody('QUANTITY_OVER_LIMIT', [limit], { requested, limit, ...details })
}
