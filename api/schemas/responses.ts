/**
 * Response entries for the route schemas: a description, the headers that
 * come with the answer, and the body schema under `application/json`.
 * Fastify serializes with the body schema (it picks the entry by media type);
 * @fastify/swagger turns description and headers into the OpenAPI document.
 * Keep in sync with API.md ("Outcomes", "Errors").
 */
import { Type, type TSchema } from '@sinclair/typebox'
import { errorRef } from './common'
import { NotEnoughTicketsSchema, PurchaseRefusedSchema } from './purchases'

type Headers = Record<string, TSchema>

export function jsonResponse<T extends TSchema> (description: string, schema: T, headers?: Headers) {
  return { description, ...(headers === undefined ? {} : { headers }), content: { 'application/json': { schema } } }
}

export function errorResponse (description: string, headers?: Headers) {
  return jsonResponse(description, errorRef, headers)
}

/** Location of the resource a 201 created or a 202 queued. */
export const locationHeader = (what: string): Headers => ({ location: Type.String({ description: what }) })

export const retryAfterHeader: Headers = {
  'retry-after': Type.String({ pattern: '^[0-9]+$', description: 'seconds to wait before trying again' }),
}

export const badRequest = errorResponse('Malformed id, body, field type or range; the message names the field. Nothing was done.')
export const payloadTooLarge = errorResponse('The body is larger than the limit (16 KiB). Nothing was done.')
export const unsupportedMediaType = errorResponse('The body is not JSON (send Content-Type: application/json). Nothing was done.')
export const serviceUnavailable = errorResponse('A dependency (PostgreSQL or Redis) is down, or the option\'s queue is full; nothing was bought. Retry after Retry-After seconds.', retryAfterHeader)
export const tooManyRequests = errorResponse('This client sent more purchase requests than the rate limit allows (RATE_LIMITED); nothing was bought. Retry after Retry-After seconds.', retryAfterHeader)

/** A Server-Sent Events stream (API.md "Waiting in line"): `position` events, then one `outcome`. */
export const eventStreamResponse = {
  description: 'text/event-stream: `event: position` with {position, estimated_wait_ms} each time it changes (at most 4 a second), then one `event: outcome` with the status route\'s body, and the stream ends',
  content: { 'text/event-stream': { schema: Type.String() } },
}

interface Answered<T extends TSchema> {
  description: string
  schema: T
  /** what the Location header names */
  location: string
}

/**
 * Every status of a request that takes tickets (a purchase or a hold), which
 * both answer alike (API.md: a hold has "the same validation, limits, ...
 * as a purchase"). `nothing` says what a refusal did not do: "bought" or "held".
 */
export function takeResponses<C extends TSchema, P extends TSchema> (created: Answered<C>, pending: Answered<P>, nothing: 'bought' | 'held') {
  return {
    201: jsonResponse(created.description, created.schema, locationHeader(created.location)),
    202: jsonResponse(
      'Queued, and the outcome not known within the wait limit (or Prefer: respond-async asked not to wait): follow Location; `position` and `estimated_wait_ms` say where it stands',
      pending.schema,
      { ...locationHeader(pending.location), 'preference-applied': Type.Optional(Type.String({ description: '`respond-async` when that preference was applied' })) }
    ),
    400: badRequest,
    404: errorResponse(`No such ticket option (TICKET_OPTION_NOT_FOUND); nothing was ${nothing}`),
    409: jsonResponse(`Fewer than \`quantity\` tickets remain (NOT_ENOUGH_TICKETS), or the user would pass max_per_user (USER_LIMIT_REACHED, with \`limit\` and \`used\`); nothing was ${nothing}`, NotEnoughTicketsSchema),
    413: payloadTooLarge,
    415: unsupportedMediaType,
    422: jsonResponse(`More than the option's max_per_purchase (QUANTITY_OVER_LIMIT, with \`limit\`), an Idempotency-Key already used with a different body (IDEMPOTENCY_KEY_REUSED), or a request the worker could not apply (PURCHASE_UNPROCESSABLE); nothing was ${nothing}`, PurchaseRefusedSchema),
    429: tooManyRequests,
    503: serviceUnavailable,
  }
}
