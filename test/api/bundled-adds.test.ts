/**
 * Requests of one option that an API gathers while its add is in flight
 * (api/purchasing/purchase-queues.ts): on Redis they go as bundle jobs, one
 * job for many requests; on PostgreSQL as one job each, in one addBulk. On
 * both, each request keeps its own id, line number and outcome, the status
 * route finds it while it waits, and the worker applies each once, in order.
 */
import t from 'tap'
import { BUNDLE_MAX_REQUESTS } from '../../api/purchasing/purchase-queues'
import { jobIdOf, requestsOfJob } from '../../shared/purchases/sale-request'
import { bundleMembersKey, purchaseQueueName } from '../../shared/queues/queue-names'
import { createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { eachQueueBackend, unbalancedOptions } from '../support/environment'
import { waitFor } from '../support/wait'

const REQUESTS = BUNDLE_MAX_REQUESTS + 50

eachQueueBackend(t, `${REQUESTS} requests at once: bundles on Redis, a job each on PostgreSQL; each found by its id while it waits, then applied once in line order`, async (t, backendEnv) => {
  const { app, sql, config, openQueues, redis, prefix } = await setUp(t, { worker: false, env: backendEnv })
  const id = await createOption(app, REQUESTS - 10)
  const answers = await Promise.all(Array.from({ length: REQUESTS }, async () => await app.inject({
    method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { prefer: 'respond-async' },
  })))
  t.same(answers.filter((a) => a.statusCode !== 202).map((a) => a.body), [], 'all queued')
  const ids = answers.map((a) => a.json().id as string)

  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  const jobs = await queues.waitingData(queue, 1000)
  const queued = jobs.flatMap((data) => requestsOfJob(data) ?? [])
  t.same([...queued.map(jobIdOf)].sort(), [...ids].sort(), 'every request is in the queue once')
  t.same(queued.map((r) => r.line), queued.map((_r, i) => i + 1), 'in line order, head to tail')
  if (backendEnv.QUEUE_BACKEND === 'redis') {
    t.ok(jobs.length < REQUESTS / 2, `in ${jobs.length} jobs: requests that came while an add was in flight went together`)
    t.ok(jobs.every((data) => (requestsOfJob(data)?.length ?? 0) <= BUNDLE_MAX_REQUESTS), `none holds more than ${BUNDLE_MAX_REQUESTS}`)
    t.equal(await redis.hlen(bundleMembersKey(prefix, id)), queued.length - jobs.filter((data) => (data as { kind?: string }).kind !== 'bundle').length, 'the index names every bundled request')
  } else {
    t.equal(jobs.length, REQUESTS, 'one job per request')
  }

  const statuses = await Promise.all(ids.map(async (purchaseId) => (await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${purchaseId}` })).json()))
  t.same(statuses.filter((s) => s.status !== 'pending'), [], 'the status route finds each one waiting')
  t.same(statuses.map((s) => s.position as number).sort((a, b) => a - b), ids.map((_id, i) => i), 'each with its own place')

  await startTestWorker(t, config)
  const rows = await waitFor(
    async () => (await sql.query<{ id: string, status: string }>('select id::text, status from purchases where ticket_option_id = $1 order by seq', [id])).rows,
    (r) => r.length === REQUESTS)
  t.same(rows.map((r) => r.id), queued.map(jobIdOf), 'applied once each, in line order')
  t.same(rows.map((r) => r.status), [...Array(REQUESTS - 10).fill('succeeded'), ...Array(10).fill('rejected')])
  const after = await Promise.all(ids.map(async (purchaseId) => (await app.inject({ method: 'GET', url: `/ticket_options/${id}/purchases/${purchaseId}` })).json().status as string))
  t.same(after.filter((s) => s === 'pending'), [], 'and the status route says so')
  if (backendEnv.QUEUE_BACKEND === 'redis') {
    await waitFor(async () => await redis.hlen(bundleMembersKey(prefix, id)), (n) => n === 0)
    t.pass('the index is emptied once they are applied')
  }
  t.same(await unbalancedOptions(sql), [])
})
