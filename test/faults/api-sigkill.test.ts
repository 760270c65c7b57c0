/**
 * Fault: the API process is SIGKILLed while its requests wait for outcomes
 * (issue 4). No worker runs at first, so every request waits; the API dies
 * before answering, so the clients never learn the purchase ids. The jobs it
 * enqueued are in Redis: a worker started afterwards applies each exactly
 * once, and a fresh API process shows every one through the status route.
 */
import { Queue } from 'bullmq'
import t from 'tap'
import { jobIdOf, requestsOfJob } from '../../shared/purchases/sale-request'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { createTestEnvironment, QUEUED } from '../support/environment'
import { callJson } from '../support/load'
import { checkBooks, createOptionOver, fireBurst } from '../support/purchase-burst'
import { startProcess } from '../support/processes'

const REQUESTS = 60

t.test('API SIGKILLed while requests wait: the jobs it enqueued are applied once and visible on a fresh API', async (t) => {
  const environment = await createTestEnvironment(t, { PURCHASE_WAIT_MS: '60000', ...QUEUED })
  const { sql, env, redis, prefix } = environment
  const api = await startProcess(t, 'api', env)
  const initial = 40
  const optionId = await createOptionOver(api.url, initial)
  const queue = new Queue(purchaseQueueName(optionId), { connection: redis, prefix })
  t.teardown(async () => { await queue.close() })

  const burst = fireBurst(api.url, optionId, { count: REQUESTS, concurrency: REQUESTS })
  // Bounded wait until the API has enqueued every request (alone, or several in a bundle job).
  let jobIds: string[] = []
  let jobs = 0
  for (let i = 0; i < 200 && jobIds.length < REQUESTS; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    const queued = await queue.getJobs(['wait', 'prioritized', 'active', 'delayed'])
    jobs = queued.length
    jobIds = queued.flatMap((job) => requestsOfJob(job.data) ?? []).map(jobIdOf)
  }
  t.equal(jobIds.length, REQUESTS, 'every request is queued and waiting before the kill')
  t.ok(jobs < REQUESTS, `in fewer jobs (${jobs}): requests that arrived together share a bundle job`)
  api.child.kill('SIGKILL')
  const answers = await burst
  t.same(answers.filter((a) => a.status !== 0).map((a) => a.status), [], 'no client got an answer: the API died first')

  const fresh = await startProcess(t, 'api', env)
  // The last one enqueued waits in a bundle: found by its own id through the bundle index.
  const before = await callJson(fresh.url, 'GET', `/ticket_options/${optionId}/purchases/${jobIds[jobIds.length - 1] as string}`)
  t.equal(before.body.status, 'pending', 'before a worker runs, a fresh API reports a queued purchase as pending')
  await startProcess(t, 'worker', env)
  let applied = 0
  for (let i = 0; i < 200 && applied < REQUESTS; i++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    applied = Number((await sql.query('select count(*) as n from purchases where ticket_option_id = $1::uuid', [optionId])).rows[0].n)
  }
  t.equal(applied, REQUESTS, 'the worker applied every job the dead API had enqueued')

  const statuses: Record<string, number> = {}
  const mismatched: string[] = []
  const { rows } = await sql.query<{ id: string, status: string }>('select id::text, status from purchases where ticket_option_id = $1::uuid', [optionId])
  const recorded = new Map(rows.map((r) => [r.id, r.status]))
  for (const id of jobIds) {
    const { status, body } = await callJson(fresh.url, 'GET', `/ticket_options/${optionId}/purchases/${id}`)
    const seen = status === 200 ? String(body.status) : `http ${status}`
    statuses[seen] = (statuses[seen] ?? 0) + 1
    if (seen !== recorded.get(id)) mismatched.push(`${id}: status route ${seen}, recorded ${recorded.get(id) ?? 'nothing'}`)
  }
  t.same(mismatched, [], 'every enqueued purchase is visible through the status route as recorded')
  t.same(rows.map((r) => r.id).filter((id) => !jobIds.includes(id)), [], 'no phantom: every recorded purchase was an enqueued job')
  t.comment(`jobs enqueued before the kill: ${jobIds.length}; status route: ${JSON.stringify(statuses)}`)

  const books = await checkBooks(t, sql, fresh.url, optionId, initial, [], { everyRowAnswered: false })
  t.equal(books.purchases, REQUESTS, 'each job applied exactly once')
  t.equal(books.soldQuantity, initial, 'sold out exactly')
})
