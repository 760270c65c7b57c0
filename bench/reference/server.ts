/**
 * The reference for `npm run bench`: the "direct" design, a plain Fastify + pg
 * server that applies each purchase in the HTTP handler, as lean as a good
 * engineer would write it: one statement (a conditional `update` of the
 * option's row and the `insert` of the purchase, committed on its own), and a
 * read of what is left only when nothing could be taken. Same schema (our migrations,
 * its own database), same validation (our TypeBox schemas and error handler),
 * same answers (201, 409 with requested/available, 404, 400).
 *
 * For comparison only: not part of the product (tsconfig.build.json does not
 * include bench/, and no product code imports it). No logging; pool of
 * REFERENCE_POOL_SIZE (default 20) connections.
 */
import { randomUUID } from 'node:crypto'
import Fastify from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import pg from 'pg'
import errorHandler from '../../api/plugins/error-handler'
import { TicketOptionNotFoundError } from '../../shared/error-catalogue'
import { ErrorSchema, errorRef } from '../../api/schemas/common'
import { CreatePurchaseSchema, NotEnoughTicketsSchema, PurchaseParamsSchema, PurchaseSchema } from '../../api/schemas/purchases'
import { CreateTicketOptionSchema, TicketOptionParamsSchema, TicketOptionSchema } from '../../api/schemas/ticket-options'

const CREATED_AT = 'to_char(created_at at time zone \'UTC\', \'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\') as created_at'

async function main (): Promise<void> {
  const pool = new pg.Pool({
    connectionString: process.env.DATABASE_URL,
    max: Number(process.env.REFERENCE_POOL_SIZE ?? '20'),
  })
  pool.on('error', () => {})

  const app = Fastify({
    logger: false,
    bodyLimit: 16 * 1024,
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, allErrors: false } },
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.removeContentTypeParser(['text/plain'])
  for (const schema of [ErrorSchema, TicketOptionSchema, PurchaseSchema, NotEnoughTicketsSchema]) app.addSchema(schema)
  await app.register(errorHandler)

  app.post('/ticket_options', {
    schema: { body: CreateTicketOptionSchema, response: { 201: TicketOptionSchema, 400: errorRef } },
  }, async (request, reply) => {
    const { name, desc = '', allocation } = request.body
    const { rows } = await pool.query(
      `insert into ticket_options (name, "desc", initial_allocation, allocation) values ($1, $2, $3::integer, $3::integer)
       returning id, name, "desc", allocation`, [name, desc, allocation])
    return await reply.code(201).header('location', `/ticket_options/${rows[0].id as string}`).send(rows[0])
  })

  app.get('/ticket_options/:id', {
    schema: { params: TicketOptionParamsSchema, response: { 200: TicketOptionSchema, 400: errorRef, 404: errorRef } },
  }, async (request) => {
    const id = request.params.id.toLowerCase()
    const { rows } = await pool.query('select id, name, "desc", allocation from ticket_options where id = $1::uuid', [id])
    if (rows[0] === undefined) throw new TicketOptionNotFoundError(id)
    return rows[0]
  })

  app.post('/ticket_options/:id/purchases', {
    schema: {
      params: PurchaseParamsSchema,
      body: CreatePurchaseSchema,
      response: { 201: PurchaseSchema, 400: errorRef, 404: errorRef, 409: NotEnoughTicketsSchema },
    },
  }, async (request, reply) => {
    const optionId = request.params.id.toLowerCase()
    const userId = request.body.user_id.toLowerCase()
    const { quantity } = request.body
    const purchaseId = randomUUID()
    // One statement, one round trip, committed on its own: the row lock is
    // taken and released inside it, and `allocation >= quantity` is checked
    // again after any wait for that lock, so it never oversells.
    const { rows } = await pool.query(
      `with taken as (
         update ticket_options set allocation = allocation - $2::integer, updated_at = now()
          where id = $1::uuid and allocation >= $2::integer
         returning id
       )
       insert into purchases (id, ticket_option_id, user_id, quantity, status)
       select $3::uuid, taken.id, $4::uuid, $2::integer, 'succeeded' from taken
       returning id, ticket_option_id, user_id, quantity, status, ${CREATED_AT}`,
      [optionId, quantity, purchaseId, userId])
    if (rows[0] !== undefined) return await reply.code(201).header('location', `/ticket_options/${optionId}/purchases/${purchaseId}`).send(rows[0])
    // Nothing taken: the option does not exist, or has too few tickets left.
    const left = await pool.query<{ allocation: number }>('select allocation from ticket_options where id = $1::uuid', [optionId])
    const available = left.rows[0]?.allocation
    if (available === undefined) throw new TicketOptionNotFoundError(optionId)
    return await reply.code(409).send({
      statusCode: 409 as const,
      error: 'Conflict',
      message: `Not enough tickets: requested ${quantity}, available ${available}`,
      code: 'NOT_ENOUGH_TICKETS' as const,
      requested: quantity,
      available,
      purchase_id: purchaseId,
    })
  })

  const close = (): void => { app.close().then(async () => { await pool.end() }).finally(() => process.exit(0)) }
  process.once('SIGTERM', close)
  process.once('SIGINT', close)
  await app.listen({ port: Number(process.env.PORT ?? '3100'), host: '127.0.0.1' })
}

main().catch((err: unknown) => {
  process.stderr.write(`reference failed: ${String(err)}\n`)
  process.exit(1)
})
