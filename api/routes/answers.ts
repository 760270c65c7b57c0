/**
 * How the answer to a purchase or hold maps to a status, shared by the two
 * routes that take them (purchases.ts, reservations.ts), so that both answer
 * the same way (API.md: a hold has "the same validation, limits,
 * Idempotency-Key, queueing, backpressure ... as a purchase").
 */
import type { FastifyReply } from 'fastify'
import type {} from '@fastify/sse' // reply.sse
import type { OutcomeStreams } from '../purchasing/outcome-streams'
import type { StatusResult, SubmitResult } from '../purchasing/sale-service'
import {
  catalogueBody, IdempotencyKeyReusedError, quantityOverLimit, rejectionBody, RETRY_AFTER_SECONDS, TicketOptionNotFoundError,
} from '../../shared/error-catalogue'

export interface SubmitAnswers<T> {
  ticketOptionId: string
  /** Prefer: respond-async was asked for (and is applied: the answer did not wait) */
  respondAsync: boolean
  requested: number
  /** the Location of the purchase or reservation */
  location: (id: string) => string
  /** the 201 body of a record that is not a rejection, or null when it is one */
  created: (record: T) => Record<string, unknown> | null
  /** the field that names a rejected record in its error body */
  idField: 'purchase_id' | 'reservation_id'
}

/**
 * Sets the answer's status and headers on `reply` and returns its body, for
 * the route to return: Fastify then sends it. (A route that awaits
 * `reply.send()` makes Fastify watch the response stream until it ends,
 * on every purchase.)
 */
export function answerSubmit<T extends { id: string, quantity: number, reason: string | null, available: number | null, used: number | null }> (
  reply: FastifyReply, result: SubmitResult<T>, answers: SubmitAnswers<T>
) {
  switch (result.kind) {
    case 'option_not_found':
      throw new TicketOptionNotFoundError(answers.ticketOptionId)
    case 'idempotency_key_reused':
      throw new IdempotencyKeyReusedError()
    case 'quantity_over_limit':
      void reply.code(422)
      return quantityOverLimit(answers.requested, result.limit)
    case 'pending':
      if (answers.respondAsync) void reply.header('preference-applied', 'respond-async')
      void reply.code(202).header('location', answers.location(result.id))
      return { id: result.id, status: 'pending' as const, ...result.place }
    case 'recorded': {
      const created = answers.created(result.record)
      if (created !== null) {
        void reply.code(201).header('location', answers.location(result.record.id))
        return created
      }
      const refused = rejectionBody(result.record, result.limits, answers.idField)
      if (refused.statusCode === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS))
      void reply.code(refused.statusCode)
      return refused
    }
  }
}

/** 409 for a request refused because of the state of what it names. */
export function stateConflict<C extends 'RESERVATION_NOT_ACTIVE' | 'NOT_CANCELLABLE'> (code: C, status: string) {
  const { error, message } = catalogueBody(code, [status])
  return { statusCode: 409 as const, error, message, code, status }
}

/** Whether a Prefer header (RFC 7240) asks for respond-async. */
export function prefersAsync (prefer: string | undefined): boolean {
  return prefer !== undefined && prefer.split(',').some((p) => p.trim().split(/[;=]/)[0]?.trim().toLowerCase() === 'respond-async')
}

/** What the events route of a purchase or a reservation needs (purchases.ts, reservations.ts). */
export interface EventsRoute<T> {
  kind: 'purchase' | 'reservation'
  ticketOptionId: string
  id: string
  status: () => Promise<StatusResult<T>>
  /** the status route's body of a decided one */
  body: (record: T) => unknown
  notFound: () => Error
}

/**
 * Server-Sent Events of one purchase or hold (API.md "Waiting in line"): an
 * unknown one is a JSON 404 (nothing is streamed); a decided one sends only its
 * `outcome`; a queued one sends `position` events, then its `outcome`, then ends.
 */
export async function streamEvents<T> (reply: FastifyReply, streams: OutcomeStreams, route: EventsRoute<T>): Promise<void> {
  const result = await route.status()
  switch (result.kind) {
    case 'option_not_found':
      throw new TicketOptionNotFoundError(route.ticketOptionId)
    case 'not_found':
      throw route.notFound()
    case 'recorded':
      await reply.sse.send({ event: 'outcome', data: route.body(result.record) })
      return
    case 'pending': {
      reply.sse.keepAlive()
      // A stream may stay quiet longer than REQUEST_TIMEOUT_MS, which closes idle sockets:
      // it lives until its outcome or its client leaves; heartbeats find a dead client.
      reply.raw.socket?.setTimeout(0)
      if (result.place !== null) await reply.sse.send({ event: 'position', data: result.place })
      const stop = streams.follow({
        kind: route.kind,
        ticketOptionId: route.ticketOptionId,
        id: route.id,
        ticket: result.ticket,
        settled: async () => {
          const now = await route.status()
          return now.kind === 'recorded' ? route.body(now.record) : null
        },
        send: async (event) => { if (reply.sse.isConnected) await reply.sse.send(event) },
        end: () => { reply.sse.close() },
      }, result.place)
      reply.sse.onClose(stop)
    }
  }
}

/** The status route's answer for a purchase or a reservation: recorded, pending with its place, or a 404. */
export function statusAnswer<T, B> (result: StatusResult<T>, route: { ticketOptionId: string, id: string, body: (record: T) => B, notFound: () => Error }) {
  switch (result.kind) {
    case 'option_not_found':
      throw new TicketOptionNotFoundError(route.ticketOptionId)
    case 'not_found':
      throw route.notFound()
    case 'pending':
      return { id: route.id, ticket_option_id: route.ticketOptionId, status: 'pending' as const, ...result.place }
    case 'recorded':
      return route.body(result.record)
  }
}
