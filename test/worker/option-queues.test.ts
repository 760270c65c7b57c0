import t from 'tap'
import { randomUUID } from 'node:crypto'
import { Queue } from 'bullmq'
import { createOption, setUp, startTestWorker } from '../support/app'
import { QUEUED } from '../support/environment'
import { PURCHASE_JOB_NAME, activeOptionsKey, purchaseQueueName } from '../../shared/queues/queue-names'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

async function eventually (check: () => Promise<boolean> | boolean, timeoutMs = 15_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return true
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return false
}

t.test('an option created after the worker started is served without a restart', async (t) => {
  const { app, worker } = await setUp(t, { env: QUEUED })
  t.same(worker?.optionQueues.activeOptionIds, [], 'nothing to serve at start')
  const id = await createOption(app, 2)
  const res = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })
  t.equal(res.statusCode, 201)
  t.same(worker?.optionQueues.activeOptionIds, [id])
})

t.test('a missed wake-up only delays a job: the rescan finds its queue', async (t) => {
  const { app, sql, config, redis, prefix } = await setUp(t, { worker: false, env: { WORKER_RESCAN_MS: '300', ...QUEUED } })
  await startTestWorker(t, config)
  const id = await createOption(app, 2)
  const queue = new Queue(purchaseQueueName(id), { connection: redis, prefix })
  t.teardown(async () => { await queue.close() })
  await queue.setGlobalConcurrency(1)
  const purchaseId = randomUUID()
  await queue.add(PURCHASE_JOB_NAME, { purchaseId, ticketOptionId: id, userId: USER, quantity: 1, requestId: 'r', enqueuedAt: Date.now() }, { jobId: purchaseId })
  // Registered, but no wake-up published: as if the message was lost.
  await redis.zadd(activeOptionsKey(prefix), Date.now(), id)
  t.ok(await eventually(async () => (await sql.query('select 1 from purchases where id = $1', [purchaseId])).rowCount === 1, 5000), 'applied after a rescan')
})

t.test('idle option queues are let go, and come back when used again', async (t) => {
  // Idle after 3 s: long enough that a purchase answered slowly on a loaded machine still finds its queue served.
  const { app, worker, redis, prefix } = await setUp(t, { env: { WORKER_QUEUE_IDLE_MS: '3000', WORKER_RESCAN_MS: '200', ...QUEUED } })
  const id = await createOption(app, 5)
  t.equal((await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })).statusCode, 201)
  t.same(worker?.optionQueues.activeOptionIds, [id])
  t.ok(await eventually(() => worker?.optionQueues.activeOptionIds.length === 0, 10_000), 'the worker closed the idle queue')
  t.ok(await eventually(async () => await redis.zscore(activeOptionsKey(prefix), id) === null, 5000), 'the registry forgot the empty queue')
  const again = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })
  t.equal(again.statusCode, 201, 'served again after being let go')
})

t.test("the API's Redis connections do not grow with the number of options", async (t) => {
  const { app, redis, prefix } = await setUp(t, { env: QUEUED })
  // Connection names carry the key prefix, so other test files' apps are not counted.
  const apiClients = async (): Promise<number> => {
    const list = await redis.client('LIST') as string
    return list.split('\n').filter((line) => line.includes(` name=${prefix}-api`)).length
  }
  const first = await createOption(app, 100)
  await app.inject({ method: 'POST', url: `/ticket_options/${first}/purchases`, payload: { quantity: 1, user_id: USER } })
  const before = await apiClients()
  for (let i = 0; i < 20; i++) {
    const id = await createOption(app, 10)
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER } })
    t.equal(res.statusCode, 201)
  }
  t.ok(before >= 2)
  t.equal(await apiClients(), before, `still ${before} connections after 20 more options`)
})
