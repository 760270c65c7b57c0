/**
 * POST /ticket_options, GET /ticket_options/:id (API.md "Core routes", "Limits")
 * and GET /ticket_options/:id/ledger (API.md "The ledger of an option").
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { ledgerOf } from '../../shared/purchases/ledger'
import { getTicketOption, type TicketOption } from '../../shared/ticket-options'
import {
  badRequest, errorResponse, jsonResponse, locationHeader, payloadTooLarge, serviceUnavailable, unsupportedMediaType,
} from '../schemas/responses'
import { CreateTicketOptionSchema, LedgerSchema, QueueLineSchema, TicketOptionParamsSchema, TicketOptionSchema } from '../schemas/ticket-options'
import { TicketOptionNotFoundError } from '../../shared/error-catalogue'

const ticketOptionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { db, sales } = app

  app.post('/ticket_options', {
    schema: {
      tags: ['ticket options'],
      summary: 'Create a ticket option',
      body: CreateTicketOptionSchema,
      response: {
        201: jsonResponse('The option is created', TicketOptionSchema, locationHeader('/ticket_options/<id> of the new option')),
        400: badRequest,
        413: payloadTooLarge,
        415: unsupportedMediaType,
        503: serviceUnavailable,
      },
    },
  }, async (request, reply) => {
    const { name, desc = '', allocation, max_per_purchase: maxPerPurchase = null, max_per_user: maxPerUser = null } = request.body
    const option = await sales.createOption({ name, desc, allocation, maxPerPurchase, maxPerUser })
    return await reply.code(201).header('location', `/ticket_options/${option.id}`).send(optionBody(option))
  })

  app.get('/ticket_options/:id', {
    schema: {
      tags: ['ticket options'],
      summary: 'Read a ticket option; allocation is the number of tickets still available',
      params: TicketOptionParamsSchema,
      response: {
        200: jsonResponse('The option, with the number of tickets still available', TicketOptionSchema),
        400: badRequest,
        404: errorResponse('No such ticket option (TICKET_OPTION_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const option = await getTicketOption(db, id)
    if (option === null) throw new TicketOptionNotFoundError(id)
    return optionBody(option)
  })

  app.get('/ticket_options/:id/ledger', {
    schema: {
      tags: ['ticket options'],
      summary: 'Where every ticket of the option is: available, held, sold, cancelled, and whether they add up',
      params: TicketOptionParamsSchema,
      response: {
        200: jsonResponse('The ledger, computed from the stored purchases and holds', LedgerSchema),
        400: badRequest,
        404: errorResponse('No such ticket option (TICKET_OPTION_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const ledger = await ledgerOf(db, id)
    if (ledger === null) throw new TicketOptionNotFoundError(id)
    return ledger
  })

  app.get('/ticket_options/:id/queue', {
    schema: {
      tags: ['ticket options'],
      summary: 'How long the option\'s line is now: for a waiting-room page, before a buyer joins',
      params: TicketOptionParamsSchema,
      response: {
        200: jsonResponse('The line: requests waiting, the recent rate and the wait for a buyer joining now', QueueLineSchema),
        400: badRequest,
        404: errorResponse('No such ticket option (TICKET_OPTION_NOT_FOUND)'),
        503: serviceUnavailable,
      },
    },
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const line = await sales.lineOf(id)
    if (line === null) throw new TicketOptionNotFoundError(id)
    return line
  })
}

/** An option as the API shows it: the limits only when they are set, so an option created the old way reads as before. */
function optionBody (option: TicketOption) {
  const { max_per_purchase: maxPerPurchase, max_per_user: maxPerUser, ...rest } = option
  return {
    ...rest,
    ...(maxPerPurchase === null ? {} : { max_per_purchase: maxPerPurchase }),
    ...(maxPerUser === null ? {} : { max_per_user: maxPerUser }),
  }
}

export default ticketOptionRoutes
