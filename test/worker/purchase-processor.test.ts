import t from 'tap'
import { randomUUID } from 'node:crypto'
import { Queue, QueueEvents } from 'bullmq'
import { createOption, setUp, startTestWorker } from '../support/app'
import { unbalancedOptions, type Teardown } from '../support/environment'
import type { Redis } from 'ioredis'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queue-names'
import { touchOption } from '../../shared/queue-registry'
import type { PurchaseJobData } from '../../shared/purchase-job'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

function job (ticketOptionId: string, quantity: number): PurchaseJobData {
  return { purchaseId: randomUUID(), ticketOptionId, userId: USER, quantity, requestId: `req-${randomUUID()}`, enqueuedAt: Date.now() }
}

async function waitFor<T> (read: () => Promise<T>, done: (value: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await read()
    if (done(value) || Date.now() > deadline) return value
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

for (const batchSize of ['1', '100']) {
  t.test(`arrival order with one worker (batch size ${batchSize})`, async (t) => {
    const { app, sql, config, redis, prefix } = await setUp(t, { worker: false, env: { WORKER_BATCH_SIZE: batchSize } })
    const id = await createOption(app, 10)
    const queue = new Queue(purchaseQueueName(id), { connection: redis, prefix })
    t.teardown(async () => { await queue.close() })
    await queue.setGlobalConcurrency(1)
    // Quantities chosen so that order decides the outcomes: 4+4 fit, 4 does not, 2 does.
    const quantities = [4, 4, 4, 2, 1, 1, 3, 1, 1, 1, 1, 1]
    const jobs = quantities.map((q) => job(id, q))
    for (const data of jobs) await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
    await touchOption(redis, prefix, id)

    await startTestWorker(t, config)
    const rows = await waitFor(
      async () => (await sql.query('select id, status from purchases where ticket_option_id = $1 order by seq', [id])).rows,
      (r) => r.length === jobs.length,
    )
    t.same(rows.map((r: { id: string }) => r.id), jobs.map((j) => j.purchaseId), 'applied in the order enqueued')
    t.same(rows.map((r: { status: string }) => r.status), [
      'succeeded', 'succeeded', 'rejected', 'succeeded', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected', 'rejected',
    ])
    t.same(await unbalancedOptions(sql), [])
  })
}

/** The option's queue and its events (to wait for a job's outcome), closed in teardown. */
async function queueWithEvents (t: Teardown, redis: Redis, prefix: string, ticketOptionId: string): Promise<{ queue: Queue, events: QueueEvents }> {
  const queue = new Queue(purchaseQueueName(ticketOptionId), { connection: redis, prefix })
  // QueueEvents blocks on its connection, so it gets one of its own.
  const eventsConnection = redis.duplicate()
  const events = new QueueEvents(purchaseQueueName(ticketOptionId), { connection: eventsConnection, prefix })
  t.teardown(async () => { await events.close(); await queue.close(); eventsConnection.disconnect() })
  await events.waitUntilReady()
  return { queue, events }
}

t.test('a redelivered job returns the recorded outcome and buys nothing more', async (t) => {
  const { app, sql, redis, prefix } = await setUp(t)
  const id = await createOption(app, 5)
  const { queue, events } = await queueWithEvents(t, redis, prefix, id)

  const data = job(id, 2)
  const first = await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
  await touchOption(redis, prefix, id)
  const outcome = await first.waitUntilFinished(events, 15_000)
  t.match(outcome, { id: data.purchaseId, status: 'succeeded', quantity: 2 })

  // The job is gone from Redis (as after removeOnComplete); the same purchase arrives again,
  // as it would after a worker crashed between COMMIT and completing the job.
  await queue.remove(data.purchaseId)
  const again = await queue.add(PURCHASE_JOB_NAME, { ...data, requestId: 'redelivered' }, { jobId: data.purchaseId })
  const replay = await again.waitUntilFinished(events, 15_000)
  t.same(replay, outcome, 'same outcome as the first delivery')

  const { rows: [state] } = await sql.query(
    `select o.allocation, (select count(*)::int from purchases where ticket_option_id = o.id) as purchases,
            (select count(*)::int from tickets where ticket_option_id = o.id) as tickets
       from ticket_options o where id = $1`, [id])
  t.same(state, { allocation: 3, purchases: 1, tickets: 2 }, 'nothing bought twice')
  t.same(await unbalancedOptions(sql), [])
})

t.test('a job with broken data fails without retrying and buys nothing', async (t) => {
  const { app, sql, redis, prefix } = await setUp(t)
  const id = await createOption(app, 5)
  const { queue, events } = await queueWithEvents(t, redis, prefix, id)
  const broken = await queue.add(PURCHASE_JOB_NAME, { purchaseId: randomUUID(), ticketOptionId: id, quantity: 'many' }, { attempts: 5 })
  await touchOption(redis, prefix, id)
  await t.rejects(broken.waitUntilFinished(events, 15_000), /does not hold purchase data/)
  const failed = await queue.getJob(broken.id as string)
  t.equal(failed?.attemptsMade, 1, 'an unrecoverable job is not retried')
  const { rows } = await sql.query('select count(*)::int as n from purchases')
  t.equal(rows[0].n, 0)
})
