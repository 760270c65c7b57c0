/**
 * POST /ticket_options/:id/purchases and GET /ticket_options/:id/purchases/:purchase_id.
 * 201 committed, 409 not enough tickets (nothing bought), 202 queued but not
 * known within the wait limit (API.md "Outcomes").
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import {
  catalogueBody, IdempotencyKeyReusedError, PurchaseNotFoundError, rejectionBody, RETRY_AFTER_SECONDS, TicketOptionNotFoundError,
} from '../../shared/error-catalogue'
import {
  badRequest, errorResponse, jsonResponse, locationHeader, payloadTooLarge, serviceUnavailable, tooManyRequests, unsupportedMediaType,
} from '../schemas/responses'
import {
  CreatePurchaseSchema, NotEnoughTicketsSchema, PendingPurchaseSchema, PurchaseHeadersSchema, PurchaseParamsSchema,
  PurchaseRefusedSchema, PurchaseSchema, PurchaseStatusParamsSchema, PurchaseStatusSchema,
} from '../schemas/purchases'

const purchaseLocation = (ticketOptionId: string, purchaseId: string): string =>
  `/ticket_options/${ticketOptionId}/purchases/${purchaseId}`

const purchaseRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { purchases } = app

  app.post('/ticket_options/:id/purchases', {
    // Limited per client IP when RATE_LIMIT_PURCHASES_PER_MINUTE is set (api/plugins/rate-limit.ts; inert otherwise).
    config: { rateLimit: {} },
    schema: {
      tags: ['purchases'],
      summary: 'Buy tickets',
      params: PurchaseParamsSchema,
      headers: PurchaseHeadersSchema,
      body: CreatePurchaseSchema,
      response: {
        201: jsonResponse('The tickets are allocated and committed', PurchaseSchema, locationHeader('the purchase: /ticket_options/<id>/purchases/<purchase_id>')),
        202: jsonResponse('Queued, but the outcome was not known within the wait limit: follow Location', PendingPurchaseSchema, locationHeader('the purchase, to read its outcome: /ticket_options/<id>/purchases/<purchase_id>')),
        400: badRequest,
        404: errorResponse('No such ticket option (TICKET_OPTION_NOT_FOUND); nothing was bought'),
        409: jsonResponse('Fewer than `quantity` tickets remain (NOT_ENOUGH_TICKETS); nothing was bought', NotEnoughTicketsSchema),
        413: payloadTooLarge,
        415: unsupportedMediaType,
        422: jsonResponse('More than MAX_TICKETS_PER_PURCHASE tickets (QUANTITY_OVER_LIMIT, with `limit`), this Idempotency-Key was already used with a different body (IDEMPOTENCY_KEY_REUSED), or the purchase could not be applied (PURCHASE_UNPROCESSABLE); nothing was bought', PurchaseRefusedSchema),
        429: tooManyRequests,
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const { quantity } = request.body
    const result = await purchases.purchase({
      ticketOptionId,
      userId: request.body.user_id.toLowerCase(),
      quantity,
      requestId: String(request.id),
    }, request.headers['idempotency-key'])
    switch (result.kind) {
      case 'option_not_found':
        throw new TicketOptionNotFoundError(ticketOptionId)
      case 'idempotency_key_reused':
        throw new IdempotencyKeyReusedError()
      case 'quantity_over_limit':
        return await reply.code(422).send(catalogueBody('QUANTITY_OVER_LIMIT', [result.limit], { requested: quantity, limit: result.limit }))
      case 'pending':
        return await reply.code(202).header('location', purchaseLocation(ticketOptionId, result.purchaseId))
          .send({ id: result.purchaseId, status: 'pending' as const })
      case 'recorded': {
        if (result.purchase.status === 'succeeded') {
          return await reply.code(201).header('location', purchaseLocation(ticketOptionId, result.purchase.id))
            .send({ ...result.purchase, status: 'succeeded' as const })
        }
        const refused = rejectionBody(result.purchase, purchases.maxTicketsPerPurchase)
        if (refused.statusCode === 503) void reply.header('retry-after', String(RETRY_AFTER_SECONDS))
        return await reply.code(refused.statusCode as 409 | 422 | 503).send(refused)
      }
    }
  })

  app.get('/ticket_options/:id/purchases/:purchase_id', {
    schema: {
      tags: ['purchases'],
      summary: "A purchase's outcome: pending, succeeded or rejected",
      params: PurchaseStatusParamsSchema,
      response: {
        200: jsonResponse('The purchase and its status: pending, succeeded or rejected (with reason)', PurchaseStatusSchema),
        400: badRequest,
        404: errorResponse('No such ticket option or purchase (TICKET_OPTION_NOT_FOUND, PURCHASE_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const ticketOptionId = request.params.id.toLowerCase()
    const purchaseId = request.params.purchase_id.toLowerCase()
    const result = await purchases.status(ticketOptionId, purchaseId)
    switch (result.kind) {
      case 'option_not_found':
        throw new TicketOptionNotFoundError(ticketOptionId)
      case 'purchase_not_found':
        throw new PurchaseNotFoundError(purchaseId)
      case 'pending':
        return { id: purchaseId, ticket_option_id: ticketOptionId, status: 'pending' as const }
      case 'recorded': {
        const { reason, available, ...purchase } = result.purchase
        return purchase.status === 'rejected'
          ? { ...purchase, reason: reason ?? undefined, available: available ?? undefined }
          : purchase
      }
    }
  })
}

export default purchaseRoutes
