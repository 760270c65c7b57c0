/**
 * How the answer to a purchase or hold maps to a status, shared by the two
 * routes that take them (purchases.ts, reservations.ts), so that both answer
 * the same way (API.md: a hold has "the same validation, limits,
 * Idempotency-Key, queueing, backpressure ... as a purchase").
 */
import type { FastifyReply } from 'fastify'
import type { SubmitResult } from '../purchasing/sale-service'
import {
  catalogueBody, IdempotencyKeyReusedError, quantityOverLimit, rejectionBody, RETRY_AFTER_SECONDS, TicketOptionNotFoundError,
} from '../../shared/error-catalogue'

export interface SubmitAnswers<T> {
  ticketOptionId: string
  requested: number
  /** the Location of the purchase or reservation */
  location: (id: string) => string
  /** the 201 body of a record that is not a rejection, or null when it is one */
  created: (record: T) => Record<string, unknown> | null
  /** the field that names a rejected record in its error body */
  idField: 'purchase_id' | 'reservation_id'
}

export async function answerSubmit<T extends { id: string, quantity: number, reason: string | null, available: number | null, used: number | null }> (
  reply: FastifyReply, result: SubmitResult<T>, answers: SubmitAnswers<T>
): Promise<FastifyReply> {
  switch (result.kind) {
    case 'option_not_found':
      throw new TicketOptionNotFoundError(answers.ticketOptionId)
    case 'idempotency_key_reused':
      throw new IdempotencyKeyReusedError()
    case 'quantity_over_limit':
      return await reply.code(422).send(quantityOverLimit(answers.requested, result.limit))
    case 'pending':
      return await reply.code(202).header('location', answers.location(result.id)).send({ id: result.id, status: 'pending' })
    case 'recorded': {
      const created = answers.created(result.record)
      if (created !== null) return await reply.code(201).header('location', answers.location(result.record.id)).send(created)
      const refused = rejectionBody(result.record, result.limits, answers.idField)
      if (refused.statusCode === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS))
      return await reply.code(refused.statusCode).send(refused)
    }
  }
}

/** 409 for a request refused because of the state of what it names. */
export function stateConflict<C extends 'RESERVATION_NOT_ACTIVE' | 'NOT_CANCELLABLE'> (code: C, status: string) {
  const { error, message } = catalogueBody(code, [status])
  return { statusCode: 409 as const, error, message, code, status }
}
