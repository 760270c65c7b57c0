/**
 * Backpressure and dependency outages (API.md "Outcomes", 503): a full option
 * queue, Redis down, PostgreSQL down or silent. Every 503 carries Retry-After
 * and buys nothing; reads that need only PostgreSQL keep working without Redis.
 */
import t from 'tap'
import pino from 'pino'
import { PurchaseQueues } from '../../api/purchasing/purchase-queues'
import { DirectFences } from '../../api/purchasing/direct-fences'
import { SaleService } from '../../api/purchasing/sale-service'
import { COUNT_MAX_AGE_MS, QueueBackpressure } from '../../api/purchasing/queue-backpressure'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { requestsOfJob } from '../../shared/purchases/sale-request'
import { buildTestApp, buy, configWith, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { sleep, waitFor } from '../support/wait'
import { createTestEnvironment, eachQueueBackend, QUEUED } from '../support/environment'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { freePort } from '../support/free-port'
import { startThrowawayRedis } from '../support/throwaway-redis'
import { startSilentServer } from '../support/silent-server'

/** Requests waiting in the option's queue, counted in its jobs (a bundle job holds several). */
async function waitingJobs (queues: QueueBackend, optionId: string): Promise<number> {
  const queue = queues.createQueue(purchaseQueueName(optionId))
  try {
    const jobs = await queues.waitingData(queue, 1000)
    return jobs.reduce<number>((n, data) => n + (requestsOfJob(data)?.length ?? 0), 0)
  } finally {
    await queue.close()
  }
}

eachQueueBackend(t, 'a full option queue answers 503 QUEUE_FULL at once and adds nothing', async (t, backendEnv) => {
  const { app, config, sql, openQueues } = await setUp(t, { worker: false, env: { QUEUE_MAX_WAITING: '5', PURCHASE_WAIT_MS: '100', ...backendEnv, ...QUEUED } })
  const id = await createOption(app, 100)
  const other = await createOption(app, 100)

  const answers = await Promise.all(Array.from({ length: 20 }, async () => await buy(app, id)))
  const statuses = answers.map((a) => a.statusCode).sort()
  t.same(statuses, [...Array(5).fill(202), ...Array(15).fill(503)], 'exactly the cap is queued, even when all arrive at once')
  const full = answers.find((a) => a.statusCode === 503)
  t.same(full?.json(), { statusCode: 503, error: 'Service Unavailable', message: 'Too many purchases are waiting for this ticket option, try again shortly', code: 'QUEUE_FULL' })
  t.equal(full?.headers['retry-after'], '1')
  t.equal(await waitingJobs(openQueues(), id), 5, 'nothing was added beyond the cap')

  const late = await buy(app, id)
  t.equal(late.statusCode, 503)
  t.ok(late.tookMs < 100, `answered in ${late.tookMs} ms`)
  const keyed = await buy(app, id, { key: 'while-full' })
  t.equal(keyed.statusCode, 503, 'a keyed request too')
  const keys = await sql.query("select 1 from idempotency_keys where key = 'while-full'")
  t.equal(keys.rowCount, 0, 'and its key is not taken')
  t.equal((await buy(app, other)).statusCode, 202, 'other options are not affected')

  await startTestWorker(t, config)
  let answer
  for (let i = 0; i < 100; i++) {
    await sleep(COUNT_MAX_AGE_MS)
    answer = await buy(app, id)
    if (answer.statusCode !== 503) break
  }
  // 201, or 202 when the worker, just started, takes longer than PURCHASE_WAIT_MS (100 ms) to answer.
  t.ok(answer?.statusCode === 201 || answer?.statusCode === 202, 'the queue drained and takes purchases again')
  const succeeded = async (): Promise<number> => (await sql.query("select count(*)::int as n from purchases where ticket_option_id = $1 and status = 'succeeded'", [id])).rows[0].n
  t.equal(await waitFor(succeeded, (n) => n >= 6), 6, 'the 5 queued and the last one; none of the refused')
})

t.test('Redis down: purchases answer 503 within a second, reads and creates still work', async (t) => {
  const redisServer = await startThrowawayRedis(t, { appendonly: false })
  const { app, sql } = await setUp(t, { env: { REDIS_URL: redisServer.url, PURCHASE_WAIT_MS: '2000' } })
  const id = await createOption(app, 10)
  t.equal((await buy(app, id)).statusCode, 201)

  await redisServer.stop('SIGKILL')
  const down = await buy(app, id)
  t.equal(down.statusCode, 503)
  t.ok(down.tookMs < 1000, `answered in ${down.tookMs} ms`)
  t.match(down.json(), { statusCode: 503, error: 'Service Unavailable', code: 'SERVICE_UNAVAILABLE' })
  t.equal(down.headers['retry-after'], '1')

  const keyed = await buy(app, id, { key: 'during-outage' })
  t.equal(keyed.statusCode, 503)
  t.ok(keyed.tookMs < 1000, `keyed answered in ${keyed.tookMs} ms`)
  const keys = await sql.query("select 1 from idempotency_keys where key = 'during-outage'")
  t.equal(keys.rowCount, 0, 'the key is let go so that a retry can try again')

  // The same with the queue cap out of the way (the app's cap reads Redis first and fails
  // before the key is claimed): the key is claimed, the add fails, the purchase is voided
  // and the key let go. Driven on a service of the app's own pool, waiter and Redis connection.
  const queues = new PurchaseQueues(app.queueBackend, pino({ level: 'silent' }))
  t.teardown(async () => { await queues.close() })
  const uncapped = new SaleService({
    db: app.db, queues, waiter: app.outcomeWaiter, line: app.queueLine, fences: new DirectFences(app.db, app.queueBackend, pino({ level: 'silent' })), waitMs: 2000, log: pino({ level: 'silent' }), idempotencyKeyTtlHours: 24,
  })
  const voidedCount = async (): Promise<number> => (await sql.query("select count(*)::int as n from purchases where ticket_option_id = $1 and reason = 'not_queued'", [id])).rows[0].n
  const voidedBefore = await voidedCount()
  const started = Date.now()
  await t.rejects(uncapped.purchase({ ticketOptionId: id, userId: USER, quantity: 1, requestId: 'test' }, { idempotencyKey: 'enqueue-fails' }), { statusCode: 503, code: 'SERVICE_UNAVAILABLE' })
  t.ok(Date.now() - started < 1000, `failed in ${Date.now() - started} ms`)
  const released = await sql.query("select 1 from idempotency_keys where key = 'enqueue-fails'")
  t.equal(released.rowCount, 0, 'the key whose enqueue failed is let go')
  t.equal(await voidedCount(), voidedBefore + 1, 'and its purchase voided, so a job added for it meanwhile buys nothing')

  const read = await app.inject({ method: 'GET', url: `/ticket_options/${id}` })
  t.equal(read.statusCode, 200)
  t.equal(read.json().allocation, 9)
  const created = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'made without Redis', allocation: 1 } })
  t.equal(created.statusCode, 201)

  await redisServer.start()
  let retried
  for (let i = 0; i < 100; i++) {
    retried = await buy(app, id, { key: 'during-outage' })
    if (retried.statusCode === 201) break
    await sleep(200)
  }
  t.equal(retried?.statusCode, 201, 'the retry with the key buys once Redis is back')
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${id}` })).json().allocation, 8)
  t.equal((await buy(app, id, { key: 'enqueue-fails' })).statusCode, 201, 'and so does the one whose enqueue failed')
  const bought = await sql.query("select count(*)::int as n from purchases where ticket_option_id = $1 and status = 'succeeded'", [id])
  t.equal(bought.rows[0].n, 3, 'the 503s bought nothing')
})

t.test('PostgreSQL down: creates, reads and purchases answer 503 within about 2 s', async (t) => {
  const environment = await createTestEnvironment(t)
  const refused = `postgres://postgres@127.0.0.1:${await freePort()}/nothing`
  const silent = `postgres://postgres@127.0.0.1:${await startSilentServer(t)}/nothing`
  for (const [label, databaseUrl] of [['refused', refused], ['silent', silent]] as const) {
    t.test(`connections ${label}`, async (t) => {
      const app = await buildTestApp(t, configWith(environment, { DATABASE_URL: databaseUrl }))
      const option = '00000000-0000-4000-8000-000000000001'
      const requests = [
        { method: 'POST' as const, url: '/ticket_options', payload: { name: 'a', allocation: 1 } },
        { method: 'GET' as const, url: `/ticket_options/${option}` },
        { method: 'POST' as const, url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { 'idempotency-key': 'k' } },
        { method: 'GET' as const, url: `/ticket_options/${option}/purchases/${option}` },
      ]
      // All at once: a silent server costs each request the pool's 2 s connection timeout.
      await Promise.all(requests.map(async (request) => {
        const started = Date.now()
        const res = await app.inject(request)
        const took = Date.now() - started
        t.equal(res.statusCode, 503, `${request.method} ${request.url}`)
        t.same(res.json(), { statusCode: 503, error: 'Service Unavailable', message: 'The database is unavailable, try again shortly', code: 'SERVICE_UNAVAILABLE' })
        t.equal(res.headers['retry-after'], '1')
        t.ok(took < 2500, `answered in ${took} ms`)
      }))
    })
  }
})

t.test('the waiting count is read every maxAgeMs once the queue is half full, and less often below that', async (t) => {
  let reads = 0
  let waiting = 10
  const backpressure = new QueueBackpressure({ waitingCount: async () => { reads++; return waiting }, maxWaiting: 100, maxAgeMs: 50, relaxedMaxAgeMs: 400 })
  await backpressure.reserve('option')
  t.equal(reads, 1, 'the first request reads it')
  await sleep(120)
  await backpressure.reserve('option')
  t.equal(reads, 1, '10 of 100 waiting: a count 120 ms old is still used')
  await sleep(320)
  await backpressure.reserve('option')
  t.equal(reads, 2, 'and read again once 400 ms old')

  waiting = 60
  await sleep(420)
  await backpressure.reserve('option')
  t.equal(reads, 3)
  await sleep(70)
  const slot = await backpressure.reserve('option')
  t.equal(reads, 4, '60 of 100 waiting: read again once 50 ms old')
  slot?.release()

  // Places handed out count too: this process alone can fill half the queue between reads.
  waiting = 0
  const other = new QueueBackpressure({ waitingCount: async () => { reads++; return waiting }, maxWaiting: 10, maxAgeMs: 50, relaxedMaxAgeMs: 60_000 })
  const before = reads
  for (let i = 0; i < 5; i++) (await other.reserve('option'))?.keep()
  await sleep(70)
  await other.reserve('option')
  t.equal(reads - before, 2, '5 kept of 10: the count is read again after 50 ms, not a minute')
})
