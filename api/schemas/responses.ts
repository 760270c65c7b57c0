/**
 * Response entries for the route schemas: a description, the headers that
 * come with the answer, and the body schema under `application/json`.
 * Fastify serializes with the body schema (it picks the entry by media type);
 * @fastify/swagger turns description and headers into the OpenAPI document.
 * Keep in sync with API.md ("Outcomes", "Errors").
 */
import { Type, type TSchema } from '@sinclair/typebox'
import { errorRef } from './common'

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
