import t from 'tap'
import { randomUUID } from 'node:crypto'
import type { Queue } from 'bullmq'
import type pg from 'pg'
import pino from 'pino'
import { configWith, createOption, setUp, startTestWorker } from '../support/app'
import { eachQueueBackend, unbalancedOptions, type Teardown } from '../support/environment'
import { withApplicationName } from '../support/purchase-burst'
import { sleep, waitFor } from '../support/wait'
import { startWorker } from '../../worker/main'
import { STUCK_RETRY_MS } from '../../worker/purchasing/purchase-processor'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { bundleMembersKey, PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import { bundleJobIdOf, type PurchaseRequest, type SaleBundle } from '../../shared/purchases/sale-request'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

function job (ticketOptionId: string, quantity: number): PurchaseRequest {
  return { purchaseId: randomUUID(), ticketOptionId, userId: USER, quantity, requestId: `req-${randomUUID()}`, enqueuedAt: Date.now() }
}

for (const batchSize of ['1', '100']) {
  eachQueueBackend(t, `arrival order with one worker (batch size ${batchSize})`, async (t, backendEnv) => {
    const { app, sql, config, openQueues } = await setUp(t, { worker: false, env: { WORKER_BATCH_SIZE: batchSize, ...backendEnv } })
    const id = await createOption(app, 10)
    // Quantities chosen so that order decides the outcomes: 4+4 fit, 4 does not, 2 does.
    const quantities = [4, 4, 4, 2, 1, 1, 3, 1, 1, 1, 1, 1]
    const jobs = quantities.map((q) => job(id, q))
    await enqueueDirectly(t, openQueues(), id, jobs)

    await startTestWorker(t, config)
    const rows = await waitFor(
      async () => (await sql.query('select id, status from purchases where ticket_option_id = $1 order by seq', [id])).rows,
      (r) => r.length === jobs.length
    )
    t.same(rows.map((r: { id: string }) => r.id), jobs.map((j) => j.purchaseId), 'applied in the order enqueued')
    t.same(rows.map((r: { status: string }) => r.status), [
      'succeeded', 'succeeded', 'rejected', 'succeeded', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected',
    ])
    t.same(await unbalancedOptions(sql), [])
  })
}

/** The option's queue, closed in teardown. */
function queueOf (t: Teardown, queues: QueueBackend, ticketOptionId: string): Queue {
  const queue = queues.createQueue(purchaseQueueName(ticketOptionId))
  t.teardown(async () => { await queue.close() })
  return queue
}

/**
 * A job once it has finished: its result, or why it failed. Read from the
 * job itself, on both backends (QueueEvents on PostgreSQL can skip events:
 * DESIGN.md "Two queue backends").
 */
async function finished (queue: Queue, jobId: string): Promise<{ returnvalue: unknown, failedReason?: string, attemptsMade: number }> {
  const done = await waitFor(async () => await queue.getJob(jobId), (j) => j?.finishedOn !== undefined, 15_000)
  if (done === undefined) throw new Error(`job ${jobId} is gone`)
  return { returnvalue: done.returnvalue, failedReason: done.failedReason, attemptsMade: done.attemptsMade }
}

eachQueueBackend(t, 'a redelivered job returns the recorded outcome and buys nothing more', async (t, backendEnv) => {
  const { app, sql, openQueues } = await setUp(t, { env: backendEnv })
  const id = await createOption(app, 5)
  const queues = openQueues()
  const queue = queueOf(t, queues, id)

  const data = job(id, 2)
  await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
  await queues.touchOption(id, Date.now())
  const outcome = (await finished(queue, data.purchaseId)).returnvalue
  t.match(outcome, { id: data.purchaseId, status: 'succeeded', quantity: 2 })

  // The job is gone from the queue (as after removeOnComplete); the same purchase arrives again,
  // as it would after a worker crashed between COMMIT and completing the job.
  await queue.remove(data.purchaseId)
  await queue.add(PURCHASE_JOB_NAME, { ...data, requestId: 'redelivered' }, { jobId: data.purchaseId })
  const replay = (await finished(queue, data.purchaseId)).returnvalue
  t.same(replay, outcome, 'same outcome as the first delivery')

  const { rows: [state] } = await sql.query(
    `select o.allocation, (select count(*)::int from purchases where ticket_option_id = o.id) as purchases
       from ticket_options o where id = $1`, [id])
  t.same(state, { allocation: 3, purchases: 1 }, 'nothing bought twice')
  t.same(await unbalancedOptions(sql), [])
})

eachQueueBackend(t, 'a job with broken data fails without retrying and buys nothing', async (t, backendEnv) => {
  const { app, sql, openQueues } = await setUp(t, { env: backendEnv })
  const id = await createOption(app, 5)
  const queues = openQueues()
  const queue = queueOf(t, queues, id)
  const broken = await queue.add(PURCHASE_JOB_NAME, { purchaseId: randomUUID(), ticketOptionId: id, quantity: 'many' }, { attempts: 5 })
  await queues.touchOption(id, Date.now())
  const failed = await finished(queue, broken.id as string)
  t.match(failed.failedReason, /does not hold purchase data/)
  t.equal(failed.attemptsMade, 1, 'an unrecoverable job is not retried')
  const { rows } = await sql.query('select count(*)::int as n from purchases')
  t.equal(rows[0].n, 0)
})

/** Jobs added straight to the option's queue (as older code or another producer could), in this order. */
async function enqueueDirectly (t: Teardown, queues: QueueBackend, ticketOptionId: string, jobs: PurchaseRequest[]): Promise<Queue> {
  const queue = queueOf(t, queues, ticketOptionId)
  await queue.setGlobalConcurrency(1)
  for (const data of jobs) await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
  await queues.touchOption(ticketOptionId, Date.now())
  return queue
}

async function appliedInOrder (sql: pg.Pool, ticketOptionId: string, count: number, timeoutMs = 15_000) {
  return await waitFor(
    async () => (await sql.query<{ id: string, status: string, reason: string | null }>('select id, status, reason from purchases where ticket_option_id = $1 order by seq', [ticketOptionId])).rows,
    (rows) => rows.length >= count,
    timeoutMs
  )
}

for (const batchSize of ['1', '100']) {
  t.test(`a purchase PostgreSQL refuses is recorded as rejected in its turn, and nothing overtakes it (batch size ${batchSize})`, async (t) => {
    // On Redis only: PostgreSQL's jsonb refuses a NUL byte already when the job is added.
    const { app, sql, config, openQueues } = await setUp(t, { worker: false, env: { WORKER_BATCH_SIZE: batchSize } })
    const id = await createOption(app, 10)
    // A NUL byte is valid JSON and passes the job schema, but PostgreSQL refuses it in text (22021): not an outage.
    const refused = { ...job(id, 2), requestId: 'bad\u0000byte' }
    const jobs = [job(id, 1), refused, job(id, 3), job(id, 1)]
    await enqueueDirectly(t, openQueues(), id, jobs)
    await startTestWorker(t, config)

    const rows = await appliedInOrder(sql, id, jobs.length)
    t.same(rows.map((r) => r.id), jobs.map((j) => j.purchaseId), 'recorded in the order enqueued')
    t.same(rows.map((r) => [r.status, r.reason]), [['succeeded', null], ['rejected', 'unprocessable'], ['succeeded', null], ['succeeded', null]])
    t.equal((await sql.query('select allocation from ticket_options where id = $1', [id])).rows[0].allocation, 5, 'the refused one took nothing')
    t.same(await unbalancedOptions(sql), [])
  })
}

eachQueueBackend(t, 'a purchase whose retries run out while PostgreSQL is unreachable goes back to the head of its queue', async (t, backendEnv) => {
  const environment = await setUp(t, { worker: false, env: backendEnv })
  const { app, sql, openQueues, databaseUrl } = environment
  const id = await createOption(app, 10)
  // Hold the option's row: the worker's first transaction waits on it until its backend is terminated.
  const locker = await sql.connect()
  t.teardown(() => { locker.release() })
  await locker.query('begin')
  await locker.query('select 1 from ticket_options where id = $1 for update', [id])

  const jobs = [job(id, 1), job(id, 2), job(id, 3)]
  await enqueueDirectly(t, openQueues(), id, jobs)
  const worker = configWith(environment, {
    WORKER_BATCH_SIZE: '1',
    // No retry in place: the first outage hands the job back at once.
    WORKER_DB_RETRY_MS: '0',
    DATABASE_URL: withApplicationName(databaseUrl, 'order-test-worker'),
  })
  await startTestWorker(t, worker)
  const blocked = async (): Promise<number[]> => (await sql.query<{ pid: number }>(
    "select pid from pg_stat_activity where application_name = 'order-test-worker' and wait_event_type = 'Lock'")).rows.map((r) => r.pid)
  const pids = await waitFor(blocked, (p) => p.length > 0)
  t.equal(pids.length, 1, 'the worker waits for the row')
  // 57P01 (admin shutdown): an outage as the worker sees it.
  await sql.query('select pg_terminate_backend($1)', [pids[0]])
  t.ok((await waitFor(blocked, (p) => p.length > 0 && p[0] !== pids[0])).length > 0, 'taken again at once, from the head')
  await locker.query('commit')

  const rows = await appliedInOrder(sql, id, jobs.length)
  t.same(rows.map((r) => r.id), jobs.map((j) => j.purchaseId), 'applied in the order enqueued')
  t.same(rows.map((r) => r.status), ['succeeded', 'succeeded', 'succeeded'])
  t.same(await unbalancedOptions(sql), [])
})

eachQueueBackend(t, 'a purchase that can be neither applied nor recorded stops its queue, visibly, instead of being overtaken', async (t, backendEnv) => {
  const { app, sql, config, openQueues } = await setUp(t, { worker: false, env: backendEnv })
  const id = await createOption(app, 10)
  // 10^16 ms is past PostgreSQL's last timestamp (22008): neither the purchase nor its rejection can be written.
  const stuck = { ...job(id, 1), enqueuedAt: 1e16 }
  const behind = job(id, 1)
  const queue = await enqueueDirectly(t, openQueues(), id, [stuck, behind])
  const lines: string[] = []
  const worker = await startWorker(config, pino({ level: 'error' }, { write: (line: string) => { lines.push(line) } }))
  t.teardown(worker.close)

  const logged = await waitFor(() => lines.filter((l) => l.includes('can be neither applied nor recorded')), (l) => l.length > 0)
  t.equal(logged.length > 0, true, 'an error says the queue waits for the purchase')
  t.match(JSON.parse(logged[0] as string), { level: 50, reqId: stuck.requestId, ticketOptionId: id })
  await sleep(STUCK_RETRY_MS + 500)
  t.same((await sql.query('select id from purchases where ticket_option_id = $1', [id])).rows, [], 'the purchase behind it was not applied first')
  t.equal(await queue.getJobState(behind.purchaseId), 'waiting', 'and still waits its turn')
})

/** Bundle jobs (Redis: an API adds the requests it gathered as one job; api/purchasing/purchase-queues.ts), added straight to the queue in this order. */
async function enqueueJobs (t: Teardown, queues: QueueBackend, ticketOptionId: string, jobs: Array<PurchaseRequest | PurchaseRequest[]>): Promise<Queue> {
  const queue = queueOf(t, queues, ticketOptionId)
  await queue.setGlobalConcurrency(1)
  for (const entry of jobs) {
    if (!Array.isArray(entry)) {
      await queue.add(PURCHASE_JOB_NAME, entry, { jobId: entry.purchaseId })
      continue
    }
    const bundleId = bundleJobIdOf(entry)
    await queues.recordBundle(ticketOptionId, bundleId, entry.map((r) => r.purchaseId))
    await queue.add(PURCHASE_JOB_NAME, { kind: 'bundle', requests: entry } satisfies SaleBundle, { jobId: bundleId })
  }
  await queues.touchOption(ticketOptionId, Date.now())
  return queue
}

/** Line numbers in the order given, as the API hands them out. */
function numbered (jobs: Array<PurchaseRequest | PurchaseRequest[]>): Array<PurchaseRequest | PurchaseRequest[]> {
  let line = 0
  const number = (r: PurchaseRequest): PurchaseRequest => ({ ...r, line: ++line })
  return jobs.map((entry) => Array.isArray(entry) ? entry.map(number) : number(entry))
}

t.test('bundles: a batch takes whole jobs while they fit, in order; a bundle applied with an earlier batch reports from it; the bundle index is emptied', async (t) => {
  const { app, sql, config, openQueues, redis, prefix } = await setUp(t, { worker: false, env: { WORKER_BATCH_SIZE: '3' } })
  const id = await createOption(app, 10)
  const jobs = numbered([job(id, 1), [job(id, 1), job(id, 1)], [job(id, 1), job(id, 1), job(id, 1)], job(id, 1)])
  const queue = await enqueueJobs(t, openQueues(), id, jobs)
  t.equal(await redis.hlen(bundleMembersKey(prefix, id)), 5, 'the index knows the 5 bundled requests')
  await startTestWorker(t, config)

  const all = jobs.flat()
  const rows = await appliedInOrder(sql, id, all.length)
  t.same(rows.map((r) => r.id), all.map((r) => r.purchaseId), 'applied in line order')
  // One transaction per batch: the rows a batch wrote share its transaction id.
  const { rows: batches } = await sql.query<{ ids: string[] }>('select array_agg(id::text order by seq) as ids from purchases where ticket_option_id = $1 group by xmin::text order by min(seq)', [id])
  t.same(batches.map((b) => b.ids.length), [3, 3, 1], 'the head with the 2-request bundle; the 3-request bundle alone (the size is 3); the last job alone')
  const second = jobs[1] as PurchaseRequest[]
  const reported = (await finished(queue, bundleJobIdOf(second))).returnvalue as Array<{ id: string, status: string }>
  t.same(reported.map((o) => [o.id, o.status]), second.map((r) => [r.purchaseId, 'succeeded']), 'a bundle applied with an earlier batch returns its own outcomes')
  await waitFor(async () => await redis.hlen(bundleMembersKey(prefix, id)), (n) => n === 0)
  t.pass('the index is empty once both bundles are applied')
  t.same(await unbalancedOptions(sql), [])
})

for (const batchSize of ['1', '100']) {
  t.test(`bundles: a refused request inside a bundle is recorded as rejected in its turn, and its neighbours are applied (batch size ${batchSize})`, async (t) => {
    const { app, sql, config, openQueues } = await setUp(t, { worker: false, env: { WORKER_BATCH_SIZE: batchSize } })
    const id = await createOption(app, 10)
    const refused = { ...job(id, 2), requestId: 'bad\u0000byte' }
    const jobs = numbered([job(id, 1), [job(id, 2), refused, job(id, 3)], job(id, 1)])
    const queue = await enqueueJobs(t, openQueues(), id, jobs)
    await startTestWorker(t, config)

    const all = jobs.flat()
    const rows = await appliedInOrder(sql, id, all.length)
    t.same(rows.map((r) => r.id), all.map((r) => r.purchaseId), 'recorded in line order')
    t.same(rows.map((r) => [r.status, r.reason]), [['succeeded', null], ['succeeded', null], ['rejected', 'unprocessable'], ['succeeded', null], ['succeeded', null]])
    const bundle = (await finished(queue, bundleJobIdOf(jobs[1] as PurchaseRequest[]))).returnvalue as Array<{ status: string }>
    t.same(bundle.map((o) => o.status), ['succeeded', 'rejected', 'succeeded'], 'the bundle job completes with each request\'s outcome')
    t.equal((await sql.query('select allocation from ticket_options where id = $1', [id])).rows[0].allocation, 3, 'the refused one took nothing')
    t.same(await unbalancedOptions(sql), [])
  })
}

t.test('a bundle whose data is broken fails without retrying and buys nothing', async (t) => {
  const { app, sql, openQueues } = await setUp(t)
  const id = await createOption(app, 5)
  const other = await createOption(app, 5)
  const queues = openQueues()
  const queue = queueOf(t, queues, id)
  const cases = [
    { kind: 'bundle', requests: [] },
    { kind: 'bundle', requests: [job(id, 1), { ...job(id, 1), quantity: 0 }] },
    { kind: 'bundle', requests: [job(id, 1), job(other, 1)] },
  ]
  for (const data of cases) {
    const added = await queue.add(PURCHASE_JOB_NAME, data, { attempts: 5 })
    await queues.touchOption(id, Date.now())
    const failed = await finished(queue, added.id as string)
    t.match(failed.failedReason, /does not hold purchase data/, JSON.stringify(data).slice(0, 60))
    t.equal(failed.attemptsMade, 1, 'not retried')
  }
  t.equal((await sql.query('select count(*)::int as n from purchases')).rows[0].n, 0)
})
