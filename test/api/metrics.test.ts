import pino from 'pino'
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { ApiMetrics } from '../../api/metrics/api-metrics'
import { QueueDepths } from '../../api/metrics/queue-depths'
import { TICKET_STOCK_TOP, TicketStock } from '../../api/metrics/ticket-stock'
import { createPool } from '../../shared/db'
import { loadConfig } from '../../shared/config'
import { openQueueBackend } from '../../shared/queues/queue-backend'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { buy, createOption, setUp } from '../support/app'
import { eachQueueBackend, QUEUED } from '../support/environment'
import { sample, samples } from '../support/prometheus-text'
import { startSilentServer } from '../support/silent-server'

const PURCHASE_ROUTE = '/ticket_options/:id/purchases'

async function scrape (app: FastifyInstance): Promise<string> {
  const res = await app.inject({ method: 'GET', url: '/metrics' })
  if (res.statusCode !== 200) throw new Error(`/metrics answered ${res.statusCode}: ${res.body}`)
  return res.body
}

t.test('API metrics move with traffic; the worker serves its own', async (t) => {
  const { app, worker } = await setUp(t, { env: QUEUED })
  const optionId = await createOption(app, 3)

  const res = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const before = res.body
  t.ok(sample(before, 'process_cpu_user_seconds_total') !== undefined, 'process default metrics')
  t.ok(sample(before, 'nodejs_eventloop_lag_seconds') !== undefined, 'event loop lag')

  const statuses = []
  for (let i = 0; i < 5; i++) statuses.push((await buy(app, optionId)).statusCode)
  t.same(statuses, [201, 201, 201, 409, 409])
  t.equal((await buy(app, optionId, { quantity: 0 })).statusCode, 400)
  t.equal((await app.inject({ method: 'GET', url: '/no/such/route/1' })).statusCode, 404)
  t.equal((await app.inject({ method: 'GET', url: '/no/such/route/2' })).statusCode, 404)

  const after = await scrape(app)
  const moved = (name: string, labels: Record<string, string>): number => (sample(after, name, labels) ?? 0) - (sample(before, name, labels) ?? 0)
  t.equal(moved('purchases_total', { outcome: 'succeeded' }), 3)
  t.equal(moved('purchases_total', { outcome: 'rejected' }), 2)
  t.equal(moved('purchases_total', { outcome: 'pending' }), 0)
  t.equal(moved('purchase_outcome_wait_seconds_count', {}), 5, 'one enqueue-to-outcome time per purchase')
  const route = { method: 'POST', route: PURCHASE_ROUTE }
  t.equal(moved('http_request_duration_seconds_count', { ...route, status_code: '201' }), 3)
  t.equal(moved('http_request_duration_seconds_count', { ...route, status_code: '409' }), 2)
  t.equal(moved('http_request_duration_seconds_count', { ...route, status_code: '400' }), 1, 'a refused body is counted under its route')
  t.equal(moved('http_request_duration_seconds_count', { method: 'GET', route: 'unmatched', status_code: '404' }), 2, 'unknown URLs share one label')
  t.notOk(after.includes('/no/such/route'), 'raw URLs never become labels')
  t.notOk(after.includes(`route="/ticket_options/${optionId}`), 'ids never become route labels')

  t.equal(sample(after, 'purchase_queue_depth_up'), 1)
  t.equal(sample(after, 'purchase_queue_options_registered'), 1)
  for (const state of ['waiting', 'active', 'delayed']) {
    t.equal(sample(after, 'purchase_queue_jobs', { ticket_option_id: optionId, state }), 0, `the option's queue has no ${state} job left`)
  }

  t.equal(sample(after, 'ticket_stock_up'), 1)
  t.same(['available', 'held', 'sold'].map((state) => sample(after, 'ticket_option_tickets', { ticket_option_id: optionId, state })), [0, 0, 3], 'the option sold out: 3 sold, none left')
  t.equal(sample(after, 'dependency_up', { dependency: 'postgres' }), 1)

  const scraped = await fetch(`http://127.0.0.1:${worker?.healthPort ?? 0}/metrics`)
  t.equal(scraped.status, 200)
  t.match(scraped.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const workerText = await scraped.text()
  const batches = sample(workerText, 'worker_purchase_batch_apply_seconds_count') ?? 0
  t.ok(batches >= 1 && batches <= 5, `batch transactions were timed (${batches})`)
  t.equal(sample(workerText, 'worker_purchase_batch_size_count'), batches, 'one batch size per transaction')
  t.equal(sample(workerText, 'worker_purchase_batch_size_sum'), 5, 'every purchase was in a batch')
  t.equal(sample(workerText, 'worker_purchases_applied_total', { status: 'succeeded' }), 3)
  t.equal(sample(workerText, 'worker_purchases_applied_total', { status: 'rejected' }), 2)
  t.ok(sample(workerText, 'process_resident_memory_bytes') !== undefined, 'worker default metrics')
  t.equal(sample(workerText, 'dependency_up', { dependency: 'postgres' }), 1, 'the worker checks its stores too')
})

t.test('the busiest options\' tickets: the most recently active ones, bounded', async (t) => {
  const { app, sql } = await setUp(t)
  const options = await Promise.all(Array.from({ length: TICKET_STOCK_TOP + 2 }, async (_, i) => await createOption(app, 10, `stock ${i}`)))
  // Two options that sold long ago are not busy; the rest sold in the last minutes.
  const [quiet1, quiet2, busy] = options as [string, string, string]
  await sql.query("update ticket_options set updated_at = now() - interval '1 hour' where id = any($1::uuid[])", [[quiet1, quiet2]])
  t.equal((await buy(app, busy, { quantity: 4 })).statusCode, 201)
  const body = await scrape(app)
  const labelled = new Set(samples(body, 'ticket_option_tickets').map((s) => s.labels.ticket_option_id))
  t.equal(labelled.size, TICKET_STOCK_TOP, `only the ${TICKET_STOCK_TOP} most recently active options`)
  t.notOk(labelled.has(quiet1) || labelled.has(quiet2), 'options quiet for an hour are left out')
  t.same(['available', 'held', 'sold'].map((state) => sample(body, 'ticket_option_tickets', { ticket_option_id: busy, state })), [6, 0, 4])
  t.equal(sample(body, 'dependency_up', { dependency: 'redis' }) ?? sample(body, 'dependency_up', { dependency: 'postgres' }), 1)
})

t.test('a PostgreSQL that cannot be reached: stock and postgres down, the rest served', async (t) => {
  const db = createPool('postgres://nobody@127.0.0.1:1/none', 1, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })
  const metrics = new ApiMetrics()
  const lines: string[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } })
  metrics.watchTicketStock(new TicketStock(db), log)
  metrics.watchDependencies(db, { storeName: 'PostgreSQL', answers: async () => false })
  metrics.purchaseAnswered('succeeded', Date.now() - 10)
  const { body } = await metrics.exposition()
  t.equal(sample(body, 'ticket_stock_up'), 0)
  t.same(samples(body, 'ticket_option_tickets'), [], 'no stock series while unknown')
  t.equal(sample(body, 'dependency_up', { dependency: 'postgres' }), 0)
  t.same(samples(body, 'dependency_up').map((s) => s.labels.dependency), ['postgres'], 'queues on PostgreSQL: no redis series')
  t.equal(sample(body, 'purchases_total', { outcome: 'succeeded' }), 1, 'the other metrics are still served')
  t.match(lines.join(''), /could not read the ticket stock/)
})

/** Queues on a Redis at this port (a silent server); the database is never asked. */
const redisAt = (port: number) => loadConfig({ QUEUE_BACKEND: 'redis', REDIS_URL: `redis://127.0.0.1:${port}`, DATABASE_URL: 'postgres://nobody@127.0.0.1:1/none', QUEUE_PREFIX: 'test-silent' })

eachQueueBackend(t, 'queue depths: the deepest option queues, bounded, as BullMQ counts them', async (t, backendEnv) => {
  // No worker: purchases stay queued and the API answers 202 after a short wait.
  const { app, openQueues } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '200', ...backendEnv, ...QUEUED } })
  const options = await Promise.all(Array.from({ length: 12 }, async (_, i) => await createOption(app, 10, `option ${i}`)))
  const deepest = options[0] as string
  const before = await scrape(app)
  // The deepest queue's two more one after the other: requests that arrive together may share a bundle job (Redis).
  const answers = (await Promise.all(options.map(async (id) => await buy(app, id)))).map((res) => res.statusCode)
  for (let i = 0; i < 2; i++) answers.push((await buy(app, deepest)).statusCode)
  t.same(answers, answers.map(() => 202))

  const after = await scrape(app)
  t.equal((sample(after, 'purchases_total', { outcome: 'pending' }) ?? 0) - (sample(before, 'purchases_total', { outcome: 'pending' }) ?? 0), 14)
  t.equal(sample(after, 'purchase_outcome_wait_seconds_count') ?? 0, 0, 'a 202 has no outcome time')
  t.equal(sample(after, 'purchase_queue_options_registered'), 12)
  const labelled = new Set(samples(after, 'purchase_queue_jobs').map((s) => s.labels.ticket_option_id))
  t.equal(labelled.size, 10, 'only the top 10 queues get series of their own')
  t.equal(sample(after, 'purchase_queue_jobs', { ticket_option_id: deepest, state: 'waiting' }), 3, 'the deepest queue is among them')
  t.equal(sample(after, 'purchase_queue_jobs_scanned', { state: 'waiting' }), 14, 'the sum covers every queue read')

  const queue = openQueues().createQueue(purchaseQueueName(deepest))
  t.teardown(async () => { await queue.close() })
  const counts = await queue.getJobCounts('wait', 'prioritized', 'active', 'delayed')
  t.equal(sample(after, 'purchase_queue_jobs', { ticket_option_id: deepest, state: 'waiting' }), (counts.wait ?? 0) + (counts.prioritized ?? 0), 'agrees with getJobCounts')
  t.equal(sample(after, 'purchase_queue_jobs', { ticket_option_id: deepest, state: 'active' }), counts.active)
})

t.test('a Redis that does not answer makes a scrape report depth down, not hang', async (t) => {
  const port = await startSilentServer(t)
  // Its ready check never gets an answer, so commands wait in the offline queue for good.
  const backend = openQueueBackend(redisAt(port), pino({ level: 'silent' }), 'worker')
  t.teardown(async () => { await backend.close() })
  const metrics = new ApiMetrics()
  const lines: string[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } })
  metrics.watchQueueDepths(new QueueDepths({ backend, scanned: 10, top: 5, timeoutMs: 300 }), log)
  metrics.purchaseAnswered('succeeded', Date.now() - 10)

  const started = Date.now()
  const { body } = await metrics.exposition()
  const ms = Date.now() - started
  t.ok(ms < 1000, `answered in ${ms} ms`)
  t.equal(sample(body, 'purchase_queue_depth_up'), 0)
  t.same(samples(body, 'purchase_queue_jobs'), [], 'no depth series while unknown')
  t.equal(sample(body, 'purchases_total', { outcome: 'succeeded' }), 1, 'the other metrics are still served')
  t.match(lines.join(''), /could not read queue depths/)
})

t.test('a Redis connection that refuses commands makes depth down at once', async (t) => {
  const port = await startSilentServer(t)
  // The API's kind of connection: no offline queue, so commands fail while it is not ready.
  const backend = openQueueBackend(redisAt(port), pino({ level: 'silent' }), 'api')
  t.teardown(async () => { await backend.close() })
  const metrics = new ApiMetrics()
  metrics.watchQueueDepths(new QueueDepths({ backend, scanned: 10, top: 5, timeoutMs: 5000 }), pino({ level: 'silent' }))
  const started = Date.now()
  const { body } = await metrics.exposition()
  t.ok(Date.now() - started < 1000, 'did not wait for the time limit')
  t.equal(sample(body, 'purchase_queue_depth_up'), 0)
})
