/**
 * Holds (API.md "Holds: reserve now, confirm or release later"):
 * POST /ticket_options/:id/reservations, GET …/reservations/:reservation_id,
 * POST …/reservations/:reservation_id/confirm and …/release.
 * A hold is queued and decided like a purchase, and answered the same way.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { ReservationNotFoundError, TicketOptionNotFoundError } from '../../shared/error-catalogue'
import type { PurchaseRecord, ReservationRecord } from '../../shared/purchases/sale-store'
import type { ChangeResult } from '../purchasing/sale-service'
import {
  badRequest, errorResponse, jsonResponse, locationHeader, payloadTooLarge, serviceUnavailable, unsupportedMediaType,
} from '../schemas/responses'
import { PurchaseHeadersSchema, PurchaseParamsSchema, PurchaseSchema, StateConflictSchema, UserBodySchema } from '../schemas/purchases'
import { CreateReservationSchema, PendingReservationSchema, ReservationParamsSchema, ReservationSchema } from '../schemas/reservations'
import { answerSubmit, prefersAsync, stateConflict, statusAnswer, streamEvents } from './answers'
import { eventStreamResponse, takeResponses } from '../schemas/responses'
import { purchaseBody } from './purchases'

/** API.md: `hold_seconds` defaults to 600. */
export const DEFAULT_HOLD_SECONDS = 600

const reservationLocation = (ticketOptionId: string, reservationId: string): string =>
  `/ticket_options/${ticketOptionId}/reservations/${reservationId}`

/** A reservation as its routes show it: only the fields that apply. */
function reservationBody (reservation: ReservationRecord) {
  const { reason, available: _available, used: _used, purchase_id: purchaseId, expires_at: expiresAt, ...rest } = reservation
  return {
    ...rest,
    ...(expiresAt === null ? {} : { expires_at: expiresAt }),
    ...(purchaseId === null ? {} : { purchase_id: purchaseId }),
    ...(reason === null ? {} : { reason }),
  }
}

const userChange = {
  params: ReservationParamsSchema,
  body: UserBodySchema,
}

const reservationRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sales, outcomeStreams } = app

  app.post('/ticket_options/:id/reservations', {
    config: { rateLimit: {} },
    schema: {
      tags: ['holds'],
      summary: 'Hold tickets for a user until expires_at, to confirm or release later',
      params: PurchaseParamsSchema,
      headers: PurchaseHeadersSchema,
      body: CreateReservationSchema,
      response: takeResponses(
        { description: 'The tickets are held for this user until expires_at', schema: ReservationSchema, location: 'the reservation: /ticket_options/<id>/reservations/<reservation_id>' },
        { description: 'queued', schema: PendingReservationSchema, location: 'the reservation, to read its outcome' },
        'held'
      ),
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const { quantity, hold_seconds: holdSeconds = DEFAULT_HOLD_SECONDS } = request.body
    const respondAsync = prefersAsync(request.headers.prefer)
    const result = await sales.hold({
      ticketOptionId,
      userId: request.body.user_id.toLowerCase(),
      quantity,
      holdSeconds,
      requestId: String(request.id),
    }, { idempotencyKey: request.headers['idempotency-key'], respondAsync })
    return answerSubmit(reply, result, {
      ticketOptionId,
      respondAsync,
      requested: quantity,
      location: (id) => reservationLocation(ticketOptionId, id),
      created: (reservation) => reservation.status === 'rejected' ? null : reservationBody(reservation),
      idField: 'reservation_id',
    })
  })

  app.get('/ticket_options/:id/reservations/:reservation_id', {
    schema: {
      tags: ['holds'],
      summary: 'A reservation and its status: pending, held, confirmed, released, expired or rejected',
      params: ReservationParamsSchema,
      response: {
        200: jsonResponse('The reservation and its status', ReservationSchema),
        400: badRequest,
        404: errorResponse('No such ticket option or reservation (TICKET_OPTION_NOT_FOUND, RESERVATION_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const reservationId = request.params.reservation_id.toLowerCase()
    return statusAnswer(await sales.reservationStatus(ticketOptionId, reservationId), {
      ticketOptionId, id: reservationId, body: reservationBody, notFound: () => new ReservationNotFoundError(reservationId),
    })
  })

  app.get('/ticket_options/:id/reservations/:reservation_id/events', {
    sse: 'only',
    schema: {
      tags: ['holds'],
      summary: 'Server-Sent Events of a hold: its position in line while queued, then its outcome',
      params: ReservationParamsSchema,
      response: {
        200: eventStreamResponse,
        400: badRequest,
        404: errorResponse('No such ticket option or reservation (TICKET_OPTION_NOT_FOUND, RESERVATION_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const reservationId = request.params.reservation_id.toLowerCase()
    await streamEvents(reply, outcomeStreams, {
      kind: 'reservation',
      ticketOptionId,
      id: reservationId,
      status: async () => await sales.reservationStatus(ticketOptionId, reservationId),
      body: reservationBody,
      notFound: () => new ReservationNotFoundError(reservationId),
    })
  })

  /** The answers confirm and release share: 404, 409 with the state, 202. */
  async function answerRefusal (reply: FastifyReply, result: Exclude<ChangeResult, { kind: 'changed' | 'already' }>, ticketOptionId: string, reservationId: string): Promise<FastifyReply> {
    switch (result.kind) {
      case 'option_not_found': throw new TicketOptionNotFoundError(ticketOptionId)
      case 'not_found': throw new ReservationNotFoundError(reservationId)
      case 'refused': return await reply.code(409).send(stateConflict('RESERVATION_NOT_ACTIVE', result.status))
      case 'pending':
        return await reply.code(202).header('location', reservationLocation(ticketOptionId, reservationId)).send({ id: reservationId, status: 'pending' as const })
    }
  }

  app.post('/ticket_options/:id/reservations/:reservation_id/confirm', {
    schema: {
      tags: ['holds'],
      summary: 'Confirm a hold: its tickets become a purchase',
      ...userChange,
      response: {
        200: jsonResponse('Confirmed before: the same purchase again', PurchaseSchema),
        201: jsonResponse('The hold is now a purchase (with reservation_id)', PurchaseSchema, locationHeader('the purchase')),
        202: jsonResponse('Queued, but not applied within the wait limit: read the reservation later', PendingReservationSchema, locationHeader('the reservation')),
        400: badRequest,
        404: errorResponse('No such ticket option, or no such reservation of this user (TICKET_OPTION_NOT_FOUND, RESERVATION_NOT_FOUND)'),
        409: jsonResponse('The hold is no longer held: expired, released or rejected (RESERVATION_NOT_ACTIVE, with its `status`)', StateConflictSchema),
        413: payloadTooLarge,
        415: unsupportedMediaType,
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const reservationId = request.params.reservation_id.toLowerCase()
    const result = await sales.confirm(ticketOptionId, reservationId, request.body.user_id.toLowerCase(), String(request.id))
    if (result.kind === 'changed' || result.kind === 'already') {
      const purchase = purchaseBody(result.purchase as PurchaseRecord)
      const body = { ...purchase, status: 'succeeded' as const }
      if (result.kind === 'already') return await reply.code(200).send(body)
      return await reply.code(201).header('location', `/ticket_options/${ticketOptionId}/purchases/${purchase.id}`).send(body)
    }
    return await answerRefusal(reply, result, ticketOptionId, reservationId)
  })

  app.post('/ticket_options/:id/reservations/:reservation_id/release', {
    schema: {
      tags: ['holds'],
      summary: 'Release a hold: its tickets are available again',
      ...userChange,
      response: {
        200: jsonResponse('The reservation, released (the same answer for every retry)', ReservationSchema),
        202: jsonResponse('Queued, but not applied within the wait limit: read the reservation later', PendingReservationSchema, locationHeader('the reservation')),
        400: badRequest,
        404: errorResponse('No such ticket option, or no such reservation of this user (TICKET_OPTION_NOT_FOUND, RESERVATION_NOT_FOUND)'),
        409: jsonResponse('The hold is confirmed, expired or rejected (RESERVATION_NOT_ACTIVE, with its `status`)', StateConflictSchema),
        413: payloadTooLarge,
        415: unsupportedMediaType,
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const reservationId = request.params.reservation_id.toLowerCase()
    const result = await sales.release(ticketOptionId, reservationId, request.body.user_id.toLowerCase(), String(request.id))
    if (result.kind === 'changed' || result.kind === 'already') return await reply.code(200).send(reservationBody(result.reservation as ReservationRecord))
    return await answerRefusal(reply, result, ticketOptionId, reservationId)
  })
}

export default reservationRoutes
