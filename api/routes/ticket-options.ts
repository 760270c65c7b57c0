/**
 * POST /ticket_options and GET /ticket_options/:id (API.md "Core routes").
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { createTicketOption, getTicketOption } from '../../shared/ticket-options'
import { errorRef } from '../schemas/common'
import { CreateTicketOptionSchema, TicketOptionParamsSchema, TicketOptionSchema } from '../schemas/ticket-options'
import { TicketOptionNotFoundError } from '../errors'

const ticketOptionRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { db, knownOptions } = app

  app.post('/ticket_options', {
    schema: {
      tags: ['ticket options'],
      summary: 'Create a ticket option',
      body: CreateTicketOptionSchema,
      response: { 201: TicketOptionSchema, 400: errorRef, 413: errorRef, 415: errorRef, 503: errorRef },
    },
  }, async (request, reply) => {
    const { name, desc = '', allocation } = request.body
    const option = await createTicketOption(db, { name, desc, allocation })
    knownOptions.add(option.id)
    return await reply.code(201).header('location', `/ticket_options/${option.id}`).send(option)
  })

  app.get('/ticket_options/:id', {
    schema: {
      tags: ['ticket options'],
      summary: 'Read a ticket option; allocation is the number of tickets still available',
      params: TicketOptionParamsSchema,
      response: { 200: TicketOptionSchema, 400: errorRef, 404: errorRef, 503: errorRef },
    },
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const option = await getTicketOption(db, id)
    if (option === null) throw new TicketOptionNotFoundError(id)
    return option
  })
}

export default ticketOptionRoutes
