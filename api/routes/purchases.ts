/**
 * POST /ticket_options/:id/purchases, GET /ticket_options/:id/purchases/:purchase_id
 * and POST …/purchases/:purchase_id/cancel (API.md "Core routes", "Cancelling a purchase").
 * 201 committed, 409 refused (nothing bought), 202 queued but not known within
 * the wait limit.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { PurchaseNotFoundError, TicketOptionNotFoundError } from '../../shared/error-catalogue'
import type { PurchaseRecord } from '../../shared/purchases/sale-store'
import {
  badRequest, errorResponse, jsonResponse, locationHeader, payloadTooLarge, serviceUnavailable, unsupportedMediaType,
} from '../schemas/responses'
import {
  CancelledPurchaseSchema, CreatePurchaseSchema, PendingPurchaseSchema, PurchaseHeadersSchema, PurchaseParamsSchema,
  PurchaseSchema, PurchaseStatusParamsSchema, PurchaseStatusSchema, StateConflictSchema, UserBodySchema,
} from '../schemas/purchases'
import { answerSubmit, prefersAsync, stateConflict, statusAnswer, streamEvents } from './answers'
import { eventStreamResponse, takeResponses } from '../schemas/responses'

const purchaseLocation = (ticketOptionId: string, purchaseId: string): string =>
  `/ticket_options/${ticketOptionId}/purchases/${purchaseId}`

/** A purchase as its routes show it: `cancelled` once cancelled, and only the fields that apply. */
export function purchaseBody (purchase: PurchaseRecord) {
  const { reason, available, reservation_id: reservationId, cancelled_at: cancelledAt } = purchase
  // Named fields, no spreads: every 201 builds one, and Node 20's V8 adds each property after a spread on a slow path.
  return {
    id: purchase.id,
    ticket_option_id: purchase.ticket_option_id,
    user_id: purchase.user_id,
    quantity: purchase.quantity,
    created_at: purchase.created_at,
    status: cancelledAt === null ? purchase.status : 'cancelled' as const,
    reservation_id: reservationId ?? undefined,
    cancelled_at: cancelledAt ?? undefined,
    reason: purchase.status === 'rejected' ? reason ?? undefined : undefined,
    available: purchase.status === 'rejected' ? available ?? undefined : undefined,
  }
}

const purchaseRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { sales, outcomeStreams } = app

  app.post('/ticket_options/:id/purchases', {
    // Limited per client IP when RATE_LIMIT_PURCHASES_PER_MINUTE is set (api/plugins/rate-limit.ts; inert otherwise).
    config: { rateLimit: {} },
    schema: {
      tags: ['purchases'],
      summary: 'Buy tickets',
      params: PurchaseParamsSchema,
      headers: PurchaseHeadersSchema,
      body: CreatePurchaseSchema,
      response: takeResponses(
        { description: 'The tickets are allocated and committed', schema: PurchaseSchema, location: 'the purchase: /ticket_options/<id>/purchases/<purchase_id>' },
        { description: 'queued', schema: PendingPurchaseSchema, location: 'the purchase, to read its outcome: /ticket_options/<id>/purchases/<purchase_id>' },
        'bought'
      ),
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const { quantity } = request.body
    const respondAsync = prefersAsync(request.headers.prefer)
    const result = await sales.purchase({
      ticketOptionId,
      userId: request.body.user_id.toLowerCase(),
      quantity,
      requestId: String(request.id),
    }, { idempotencyKey: request.headers['idempotency-key'], respondAsync })
    return answerSubmit(reply, result, {
      ticketOptionId,
      respondAsync,
      requested: quantity,
      location: (id) => purchaseLocation(ticketOptionId, id),
      created: (purchase) => purchase.status === 'succeeded' ? purchaseBody(purchase) : null,
      idField: 'purchase_id',
    })
  })

  app.get('/ticket_options/:id/purchases/:purchase_id', {
    schema: {
      tags: ['purchases'],
      summary: "A purchase's outcome: pending, succeeded, rejected or cancelled",
      params: PurchaseStatusParamsSchema,
      response: {
        200: jsonResponse('The purchase and its status: pending, succeeded, rejected (with reason) or cancelled (with cancelled_at)', PurchaseStatusSchema),
        400: badRequest,
        404: errorResponse('No such ticket option or purchase (TICKET_OPTION_NOT_FOUND, PURCHASE_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const purchaseId = request.params.purchase_id.toLowerCase()
    return statusAnswer(await sales.purchaseStatus(ticketOptionId, purchaseId), {
      ticketOptionId, id: purchaseId, body: purchaseBody, notFound: () => new PurchaseNotFoundError(purchaseId),
    })
  })

  app.get('/ticket_options/:id/purchases/:purchase_id/events', {
    sse: 'only',
    schema: {
      tags: ['purchases'],
      summary: 'Server-Sent Events of a purchase: its position in line while queued, then its outcome',
      params: PurchaseStatusParamsSchema,
      response: {
        200: eventStreamResponse,
        400: badRequest,
        404: errorResponse('No such ticket option or purchase (TICKET_OPTION_NOT_FOUND, PURCHASE_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const purchaseId = request.params.purchase_id.toLowerCase()
    await streamEvents(reply, outcomeStreams, {
      kind: 'purchase',
      ticketOptionId,
      id: purchaseId,
      status: async () => await sales.purchaseStatus(ticketOptionId, purchaseId),
      body: purchaseBody,
      notFound: () => new PurchaseNotFoundError(purchaseId),
    })
  })

  app.post('/ticket_options/:id/purchases/:purchase_id/cancel', {
    schema: {
      tags: ['purchases'],
      summary: 'Cancel a purchase: its tickets are available again',
      params: PurchaseStatusParamsSchema,
      body: UserBodySchema,
      response: {
        200: jsonResponse('The purchase, cancelled (the same answer for every retry)', CancelledPurchaseSchema),
        202: jsonResponse('Queued, but not applied within the wait limit: read the purchase later', PendingPurchaseSchema, locationHeader('the purchase')),
        400: badRequest,
        404: errorResponse('No such ticket option, or no such purchase of this user (TICKET_OPTION_NOT_FOUND, PURCHASE_NOT_FOUND)'),
        409: jsonResponse('The purchase was rejected or is still pending (NOT_CANCELLABLE, with its `status`)', StateConflictSchema),
        413: payloadTooLarge,
        415: unsupportedMediaType,
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const purchaseId = request.params.purchase_id.toLowerCase()
    const result = await sales.cancel(ticketOptionId, purchaseId, request.body.user_id.toLowerCase(), String(request.id))
    switch (result.kind) {
      case 'option_not_found':
        throw new TicketOptionNotFoundError(ticketOptionId)
      case 'not_found':
        throw new PurchaseNotFoundError(purchaseId)
      case 'refused':
        return await reply.code(409).send(stateConflict('NOT_CANCELLABLE', result.status))
      case 'pending':
        return await reply.code(202).header('location', purchaseLocation(ticketOptionId, purchaseId)).send({ id: purchaseId, status: 'pending' as const })
      case 'changed':
      case 'already': {
        const purchase = purchaseBody(result.purchase as PurchaseRecord)
        return await reply.code(200).send({ ...purchase, status: 'cancelled' as const, cancelled_at: purchase.cancelled_at ?? '' })
      }
    }
  })
}

export default purchaseRoutes
