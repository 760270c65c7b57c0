import { randomUUID } from 'node:crypto'
import t from 'tap'
import { buildApp } from '../../api/app'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import { buy, createOption, setUp, startTestWorker } from '../support/app'
import { waitFor } from '../support/wait'
import { createTestEnvironment, eachQueueBackend, QUEUED, unbalancedOptions } from '../support/environment'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

eachQueueBackend(t, 'purchases through the queue and the worker', async (t, backendEnv) => {
  const { app, sql } = await setUp(t, { env: backendEnv })

  t.test('201 with the committed purchase, 409 when too few remain, GET shows what is left', async (t) => {
    const id = await createOption(app, 3)
    const bought = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 2, user_id: USER } })
    t.equal(bought.statusCode, 201)
    const purchase = bought.json()
    t.same(Object.keys(purchase).sort(), ['created_at', 'id', 'quantity', 'status', 'ticket_option_id', 'user_id'])
    t.match(purchase, { ticket_option_id: id, user_id: USER, quantity: 2, status: 'succeeded' })
    t.match(purchase.id, UUID)
    t.ok(!Number.isNaN(Date.parse(purchase.created_at)))
    t.equal(bought.headers.location, `/ticket_options/${id}/purchases/${purchase.id}`)

    const refused = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 2, user_id: USER } })
    t.equal(refused.statusCode, 409)
    t.match(refused.json(), { statusCode: 409, error: 'Conflict', code: 'NOT_ENOUGH_TICKETS', requested: 2, available: 1, message: 'Not enough tickets: requested 2, available 1' })

    const last = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })
    t.equal(last.statusCode, 201, 'a smaller request after a rejection still gets the last ticket')

    const option = await app.inject({ method: 'GET', url: `/ticket_options/${id}` })
    t.equal(option.json().allocation, 0)
    const sold = await sql.query("select sum(quantity)::int as n from purchases where ticket_option_id = $1 and status = 'succeeded'", [id])
    t.equal(sold.rows[0].n, 3, 'the succeeded purchases hold every ticket bought')
    t.same(await unbalancedOptions(sql), [])
  })

  t.test('the status route shows succeeded and rejected purchases', async (t) => {
    const id = await createOption(app, 1)
    const ok = (await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })).json()
    const no = (await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })).json()
    const okStatus = await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${ok.id}` })
    t.equal(okStatus.statusCode, 200)
    t.same(okStatus.json(), { ...ok })
    const noStatus = await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${no.purchase_id}` })
    t.equal(noStatus.statusCode, 200)
    t.match(noStatus.json(), { id: no.purchase_id, status: 'rejected', reason: 'not_enough_tickets', available: 0, quantity: 1 })
  })

  t.test('404s: unknown option (buying and reading status), unknown purchase, purchase of another option', async (t) => {
    const unknown = '00000000-0000-4000-8000-000000000000'
    const buy = await app.inject({ method: 'POST', url: `/ticket_options/${unknown}/purchases`, payload: { quantity: 1, user_id: USER } })
    t.equal(buy.statusCode, 404)
    t.same(buy.json(), { statusCode: 404, error: 'Not Found', message: `Ticket option ${unknown} not found`, code: 'TICKET_OPTION_NOT_FOUND' })
    const status = await app.inject({ method: 'GET', url: `/ticket_options/${unknown}/purchases/${unknown}` })
    t.equal(status.statusCode, 404)
    t.equal(status.json().code, 'TICKET_OPTION_NOT_FOUND')

    const id = await createOption(app, 5)
    const missing = await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${unknown}` })
    t.equal(missing.statusCode, 404)
    t.equal(missing.json().code, 'PURCHASE_NOT_FOUND')

    const other = await createOption(app, 5)
    const mine = (await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })).json()
    const crossed = await app.inject({ method: 'GET', url: `/ticket_options/${other}/purchases/${mine.id}` })
    t.equal(crossed.statusCode, 404, 'a purchase is only found under its own option')
  })

  t.test('400s name the field, and nothing is bought', async (t) => {
    const id = await createOption(app, 5)
    const cases: Array<[unknown, RegExp]> = [
      [{ user_id: USER }, /must have required property 'quantity'/],
      [{ quantity: 1 }, /must have required property 'user_id'/],
      [{ quantity: 0, user_id: USER }, /body\/quantity must be >= 1/],
      [{ quantity: -3, user_id: USER }, /body\/quantity must be >= 1/],
      [{ quantity: 2147483648, user_id: USER }, /body\/quantity must be <= 2147483647/],
      [{ quantity: '2', user_id: USER }, /body\/quantity must be integer/],
      [{ quantity: 1.5, user_id: USER }, /body\/quantity must be integer/],
      [{ quantity: null, user_id: USER }, /body\/quantity must be integer/],
      [{ quantity: [1], user_id: USER }, /body\/quantity must be integer/],
      [{ quantity: true, user_id: USER }, /body\/quantity must be integer/],
      [{ quantity: 1, user_id: 'someone' }, /body\/user_id must match pattern/],
      [{ quantity: 1, user_id: 42 }, /body\/user_id must be string/],
    ]
    for (const [payload, message] of cases) {
      const res = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: payload as object })
      t.equal(res.statusCode, 400, JSON.stringify(payload))
      t.match(res.json(), { statusCode: 400, error: 'Bad Request', code: 'FST_ERR_VALIDATION' })
      t.match(res.json().message, message)
    }
    const badId = await app.inject({ method: 'POST', url: '/ticket_options/nope/purchases', payload: { quantity: 1, user_id: USER } })
    t.equal(badId.statusCode, 400)
    t.match(badId.json().message, /params\/id/)
    const badPurchaseId = await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/nope` })
    t.equal(badPurchaseId.statusCode, 400)
    t.match(badPurchaseId.json().message, /params\/purchase_id/)
    const notJson = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, headers: { 'content-type': 'text/plain' }, payload: 'quantity=1' })
    t.equal(notJson.statusCode, 415)
    const { rows } = await sql.query('select count(*)::int as n from purchases where ticket_option_id = $1', [id])
    t.equal(rows[0].n, 0, 'no bad request reached the queue')
    t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${id}` })).json().allocation, 5)
  })

  t.test('ids in capitals name the same option and user', async (t) => {
    const id = await createOption(app, 2)
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${id.toUpperCase()}/purchases`, payload: { quantity: 1, user_id: USER.toUpperCase() } })
    t.equal(res.statusCode, 201)
    t.match(res.json(), { ticket_option_id: id, user_id: USER })
  })
})

eachQueueBackend(t, '202 when the outcome is not known in time; the status route shows it later', async (t, backendEnv) => {
  const { app, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '200', ...backendEnv, ...QUEUED } })
  const id = await createOption(app, 1)
  const res = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })
  t.equal(res.statusCode, 202)
  const pending = res.json()
  t.same(pending, { id: pending.id, status: 'pending', position: 0, estimated_wait_ms: 0 }, 'first in line, nobody ahead')
  t.match(pending.id, UUID)
  t.equal(res.headers.location, `/ticket_options/${id}/purchases/${pending.id}`)
  const before = await app.inject({ method: 'GET', url: res.headers.location as string })
  t.equal(before.statusCode, 200)
  t.same(before.json(), { id: pending.id, ticket_option_id: id, status: 'pending', position: 0, estimated_wait_ms: 0 })

  await startTestWorker(t, config)
  let settled
  for (let i = 0; i < 100; i++) {
    settled = (await app.inject({ method: 'GET', url: res.headers.location as string })).json()
    if (settled.status !== 'pending') break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.match(settled, { id: pending.id, status: 'succeeded', quantity: 1 })
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${id}` })).json().allocation, 0)
})

t.test('an error nobody planned for is a bare 500 without internals', async (t) => {
  const { config } = await createTestEnvironment(t)
  const app = await buildApp(config, { logger: false })
  t.teardown(async () => { await app.close() })
  app.get('/boom', async () => { throw new Error('secret SQL: select * from users') })
  const res = await app.inject({ method: 'GET', url: '/boom' })
  t.equal(res.statusCode, 500)
  t.same(res.json(), { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error', code: 'INTERNAL_SERVER_ERROR' })
})

eachQueueBackend(t, 'a purchase of 1,999,999,999 tickets, and one right behind it, both answer within a second', async (t, backendEnv) => {
  const { app, sql } = await setUp(t, { env: backendEnv })
  const id = await createOption(app, 2147483647)
  const started = Date.now()
  const [huge, behind] = await Promise.all([buy(app, id, { quantity: 1_999_999_999 }), buy(app, id, { quantity: 2 })])
  const tookMs = Date.now() - started
  t.equal(huge.statusCode, 201)
  t.equal(behind.statusCode, 201)
  t.ok(huge.tookMs < 1000 && behind.tookMs < 1000, `answered in ${huge.tookMs} and ${behind.tookMs} ms (${tookMs} ms for both)`)
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${id}` })).json().allocation, 2147483647 - 2_000_000_001)
  t.same(await unbalancedOptions(sql), [])
})

eachQueueBackend(t, 'max_per_purchase: a larger purchase is a 422 at once and queues nothing; the limit itself sells', async (t, backendEnv) => {
  const { app, sql, openQueues } = await setUp(t, { env: backendEnv })
  const created = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'limited', allocation: 1_000_000, max_per_purchase: 1000 } })
  t.equal(created.statusCode, 201)
  t.match(created.json(), { allocation: 1_000_000, max_per_purchase: 1000 })
  t.notOk('max_per_user' in created.json(), 'an unset limit is left out')
  const id = created.json().id as string
  for (const quantity of [1001, 2_000_000_000]) {
    const huge = await buy(app, id, { quantity })
    t.equal(huge.statusCode, 422, `quantity ${quantity}`)
    t.same(huge.json(), {
      statusCode: 422, error: 'Unprocessable Entity', message: 'At most 1000 tickets can be bought or held at once', code: 'QUANTITY_OVER_LIMIT', requested: quantity, limit: 1000,
    })
  }
  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  t.equal(await queue.count(), 0, 'nothing was queued')
  t.equal((await buy(app, id, { quantity: 1000 })).statusCode, 201)

  // A job that reached the queue some other way (older code, another producer) is refused by the worker, in its turn.
  const direct = { purchaseId: randomUUID(), ticketOptionId: id, userId: USER, quantity: 3_000_000, requestId: 'direct', enqueuedAt: Date.now() }
  await queue.add(PURCHASE_JOB_NAME, direct, { jobId: direct.purchaseId })
  await queues.touchOption(id, Date.now())
  const status = await waitFor(async () => (await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${direct.purchaseId}` })).json(), (body) => body.status !== 'pending')
  t.match(status, { status: 'rejected', reason: 'quantity_over_limit', quantity: 3_000_000 })
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${id}` })).json().allocation, 999_000)
  t.same(await unbalancedOptions(sql), [])
})
