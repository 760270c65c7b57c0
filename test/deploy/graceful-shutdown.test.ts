/**
 * SIGTERM in the middle of a burst, to the API and to one of two workers
 * (DESIGN.md "Shutdown"): the API stops accepting, answers every request it
 * had accepted with its real outcome and exits 0; the worker finishes the
 * purchase it is applying and exits 0; the other worker applies the rest.
 */
import { Queue } from 'bullmq'
import t from 'tap'
import { Pool } from 'undici'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { createTestEnvironment, unbalancedOptions } from '../support/environment'
import { startProcess } from '../support/processes'

const USER_ID = '406c1d05-bbb2-4e94-b183-7d208c2692e1'
const ALLOCATION = 80
const PURCHASES = 400
const CONNECTIONS = 30
/** Answers received before the signals are sent. */
const STRIKE_AFTER = 100

interface Outcome {
  requestId: string
  status: number
  purchaseId?: string
  error?: string
}

t.test('SIGTERM to the API and one worker during a burst', async (t) => {
  const environment = await createTestEnvironment(t)
  const api = await startProcess(t, 'api', environment.env)
  const leaving = await startProcess(t, 'worker', environment.env)
  const staying = await startProcess(t, 'worker', environment.env)

  const setup = new Pool(api.url, { connections: 1 })
  const created = await setup.request({ method: 'POST', path: '/ticket_options', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'shutdown', allocation: ALLOCATION }) })
  const optionId = (await created.body.json() as { id: string }).id
  await setup.close()
  t.equal(created.statusCode, 201)

  const pool = new Pool(api.url, { connections: CONNECTIONS, pipelining: 1 })
  t.teardown(async () => { await pool.destroy() })
  const outcomes: Outcome[] = []
  let struck = false
  let struckAt = 0
  let next = 0
  await Promise.all(Array.from({ length: CONNECTIONS }, async () => {
    while (next < PURCHASES) {
      const requestId = `shutdown-${next++}`
      let outcome: Outcome
      try {
        const res = await pool.request({
          method: 'POST',
          path: `/ticket_options/${optionId}/purchases`,
          headers: { 'content-type': 'application/json', 'x-request-id': requestId },
          body: JSON.stringify({ quantity: 1, user_id: USER_ID }),
        })
        const body = await res.body.json() as { id?: string, purchase_id?: string }
        outcome = { requestId, status: res.statusCode }
        const purchaseId = res.statusCode === 409 ? body.purchase_id : body.id
        if (purchaseId !== undefined && res.statusCode !== 503) outcome.purchaseId = purchaseId
      } catch (err) {
        const e = err as { code?: string, cause?: { code?: string } }
        outcome = { requestId, status: 0, error: e.cause?.code ?? e.code ?? String(err) }
      }
      outcomes.push(outcome)
      if (!struck && outcomes.length >= STRIKE_AFTER) {
        struck = true
        struckAt = Date.now()
        api.child.kill('SIGTERM')
        leaving.child.kill('SIGTERM')
      }
    }
  }))

  t.equal(await api.exited, 0, 'the API exits 0')
  const apiExitMs = Date.now() - struckAt
  t.equal(await leaving.exited, 0, 'the signalled worker exits 0')
  const workerExitMs = Date.now() - struckAt
  t.ok(staying.child.exitCode === null, 'the other worker keeps running')

  // A failed request counts as accepted when the API logged it as an incoming request.
  const accepted = new Set<string>()
  for (const line of api.output) {
    const match = /"reqId":"(shutdown-\d+)".*"msg":"incoming request"/.exec(line)
    if (match?.[1] !== undefined) accepted.add(match[1])
  }
  const failed = outcomes.filter((o) => o.status === 0)
  const resetAfterAccept = failed.filter((o) => accepted.has(o.requestId))
  const notAccepted = failed.filter((o) => !accepted.has(o.requestId))
  t.same(resetAfterAccept, [], 'no client saw its connection fail for a request the API had accepted')
  const count = (status: number): number => outcomes.filter((o) => o.status === status).length
  const refused = notAccepted.filter((o) => o.error === 'ECONNREFUSED').length
  t.same(outcomes.filter((o) => ![0, 201, 202, 409, 503].includes(o.status)), [], 'only 201, 202, 409, or 503 while closing')
  t.ok(count(201) + count(409) + count(202) >= STRIKE_AFTER, 'the burst was answered until the signal')

  // The remaining worker applies everything that was enqueued.
  const told = outcomes.filter((o) => o.purchaseId !== undefined)
  const deadline = Date.now() + 30_000
  let recorded = new Map<string, string>()
  while (Date.now() < deadline) {
    const { rows } = await environment.sql.query<{ id: string, status: string }>('select id::text, status from purchases where ticket_option_id = $1::uuid', [optionId])
    recorded = new Map(rows.map((r) => [r.id, r.status]))
    if (told.every((o) => recorded.has(o.purchaseId as string))) break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.same(told.filter((o) => !recorded.has(o.purchaseId as string)).map((o) => `${o.status} ${o.purchaseId ?? ''}`), [], 'every purchase a client was told about is recorded')
  t.same(outcomes.filter((o) => o.status === 201 && recorded.get(o.purchaseId as string) !== 'succeeded'), [], 'every 201 is committed')
  t.same(outcomes.filter((o) => o.status === 409 && recorded.get(o.purchaseId as string) !== 'rejected'), [], 'every 409 is recorded as rejected')
  t.equal(recorded.size, told.length, 'no purchase recorded that no client was told about')
  t.same(await unbalancedOptions(environment.sql), [], 'invariant 1 holds')

  const queue = new Queue(purchaseQueueName(optionId), { connection: environment.redis, prefix: environment.prefix })
  t.teardown(async () => { await queue.close() })
  let counts: Record<string, number> = {}
  while (Date.now() < deadline) {
    counts = await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized')
    if (Object.values(counts).every((n) => n === 0)) break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.same(counts, { wait: 0, active: 0, delayed: 0, prioritized: 0 }, 'the queue is drained by the remaining worker')

  t.comment(`shutdown: ${outcomes.length} sent; 201 ${count(201)}, 409 ${count(409)}, 202 ${count(202)}, 503 ${count(503)}, ` +
    `refused ${refused}, closed before accepted ${notAccepted.length - refused}, reset after accepted ${resetAfterAccept.length}; ` +
    `recorded ${recorded.size}; api exited within ${apiExitMs} ms, worker within ${workerExitMs} ms`)
})
