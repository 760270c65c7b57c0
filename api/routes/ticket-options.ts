/**
 * POST /ticket_options and GET /ticket_options/:id (API.md "Core routes").
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createTicketOption, getTicketOption } from '../../shared/ticket-options'
import {
  badRequest, errorResponse, jsonResponse, locationHeader, payloadTooLarge, serviceUnavailable, unsupportedMediaType,
} from '../schemas/responses'
import { CreateTicketOptionSchema, TicketOptionParamsSchema, TicketOptionSchema } from '../schemas/ticket-options'
import { TicketOptionNotFoundError } from '../../shared/error-catalogue'

const ticketOptionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { db } = app

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
    const { name, desc = '', allocation } = request.body
    const option = await createTicketOption(db, { name, desc, allocation })
    return await reply.code(201).header('location', `/ticket_options/${option.id}`).send(option)
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
    return option
  })
}

export default ticketOptionRoutes
