/**
 * Waiting in line (API.md): a buyer's position and estimated wait on the 202
 * and the status route, `Prefer: respond-async`, the line's length, and
 * Server-Sent Events that fan out from what the API process already hears.
 */
import v8 from 'node:v8'
import vm from 'node:vm'
import t from 'tap'
import { requestsOfJob } from '../../shared/purchases/sale-request'
import type { FastifyInstance } from 'fastify'
import { EventSource } from 'undici'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { buildTestApp, configWith, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { eachQueueBackend } from '../support/environment'
import { withApplicationName } from '../support/purchase-burst'
import { sleep, waitFor } from '../support/wait'

const ASYNC = { prefer: 'respond-async' }

// A full collection before a heap reading, so the per-stream figure is not the collector's timing.
v8.setFlagsFromString('--expose_gc')
const gc = vm.runInNewContext('gc') as () => void

/** `count` respond-async purchases, `inFlight` at a time (one process plays thousands of buyers). */
async function enqueueMany (app: FastifyInstance, option: string, count: number, inFlight = 100) {
  const answers: Array<Awaited<ReturnType<typeof enqueue>>> = []
  for (let i = 0; i < count; i += inFlight) {
    answers.push(...await Promise.all(Array.from({ length: Math.min(inFlight, count - i) }, async () => await enqueue(app, option))))
  }
  return answers
}

async function enqueue (app: FastifyInstance, option: string, quantity = 1) {
  return await app.inject({ method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity, user_id: USER }, headers: ASYNC })
}

const statusOf = async (app: FastifyInstance, option: string, id: string) =>
  (await app.inject({ method: 'GET', url: `/ticket_options/${option}/purchases/${id}` })).json()

interface Followed {
  positions: number[]
  outcome: Record<string, unknown> | null
  ended: Promise<void>
  source: EventSource
}

/** An EventSource on a purchase's events; closed on its outcome, as a browser page does. */
function follow (base: string, option: string, id: string): Followed {
  const source = new EventSource(`${base}/ticket_options/${option}/purchases/${id}/events`)
  const followed: Followed = { positions: [], outcome: null, ended: Promise.resolve(), source }
  followed.ended = new Promise((resolve) => {
    // A stream refused (a 404) or broken for good ends here, so a test never waits on it forever.
    source.addEventListener('error', () => { if (source.readyState === EventSource.CLOSED) resolve() })
    source.addEventListener('position', (e) => { followed.positions.push((JSON.parse((e as MessageEvent).data as string) as { position: number }).position) })
    source.addEventListener('outcome', (e) => {
      followed.outcome = JSON.parse((e as MessageEvent).data as string) as Record<string, unknown>
      source.close()
      resolve()
    })
  })
  return followed
}

eachQueueBackend(t, 'respond-async answers 202 at once with the place in line, and the status route and the queue route agree', async (t, backendEnv) => {
  const { app, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '5000', ...backendEnv } })
  const option = await createOption(app, 100)
  const started = Date.now()
  const answers = []
  for (let i = 0; i < 3; i++) answers.push(await enqueue(app, option, 1))
  t.ok(Date.now() - started < 1000, `three 202s in ${Date.now() - started} ms, not three waits of PURCHASE_WAIT_MS`)
  t.same(answers.map((a) => a.statusCode), [202, 202, 202])
  t.same(answers.map((a) => a.headers['preference-applied']), ['respond-async', 'respond-async', 'respond-async'])
  t.same(answers.map((a) => a.json().position), [0, 1, 2], 'each behind the one before')
  t.same(answers.map((a) => a.json().estimated_wait_ms), [0, null, null], 'no rate known yet')
  const ids = answers.map((a) => a.json().id as string)
  t.same((await Promise.all(ids.map(async (id) => await statusOf(app, option, id)))).map((s) => s.position), [0, 1, 2])
  t.same((await app.inject({ method: 'GET', url: `/ticket_options/${option}/queue` })).json(), { waiting: 3, applied_per_second: 0, estimated_wait_ms: null })

  const waited = await app.inject({ method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { prefer: 'wait=1' } })
  t.equal(waited.headers['preference-applied'], undefined, 'another preference is not applied')

  await startTestWorker(t, config)
  for (const id of ids) t.equal((await waitFor(async () => await statusOf(app, option, id), (s) => s.status !== 'pending')).status, 'succeeded')
  const line = await waitFor(async () => (await app.inject({ method: 'GET', url: `/ticket_options/${option}/queue` })).json(), (l) => l.waiting === 0)
  t.equal(line.waiting, 0)
  t.ok(line.applied_per_second > 0, `the rate is known once requests were applied (${line.applied_per_second}/s)`)
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${crypto.randomUUID()}/queue` })).statusCode, 404)
})

eachQueueBackend(t, 'a request being applied reads position 0; the ones behind it count it', async (t, backendEnv) => {
  const environment = await setUp(t, { worker: false, env: backendEnv })
  const { app, sql, databaseUrl } = environment
  const option = await createOption(app, 10)
  // Hold the option's row: the worker's batch starts (and says so) and then waits on it.
  const locker = await sql.connect()
  t.teardown(() => { locker.release() })
  await locker.query('begin')
  await locker.query('select 1 from ticket_options where id = $1 for update', [option])
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push((await enqueue(app, option)).json().id as string)
  await startTestWorker(t, configWith(environment, { WORKER_BATCH_SIZE: '1', DATABASE_URL: withApplicationName(databaseUrl, 'line-test-worker') }))
  await waitFor(async () => (await sql.query("select 1 from pg_stat_activity where application_name = 'line-test-worker' and wait_event_type = 'Lock'")).rowCount ?? 0, (n) => n > 0)
  const positions = await waitFor(async () => await Promise.all(ids.map(async (id) => (await statusOf(app, option, id)).position as number)), (p) => p[0] === 0)
  t.same(positions, [0, 1, 2], 'the head is being applied; one and two requests are ahead of the others')
  await locker.query('commit')
  for (const id of ids) t.equal((await waitFor(async () => await statusOf(app, option, id), (s) => s.status !== 'pending')).status, 'succeeded')
})

eachQueueBackend(t, '2,000 respond-async purchases: distinct places in arrival order, never rising, then every outcome', async (t, backendEnv) => {
  const { app, config, openQueues } = await setUp(t, { worker: false, env: backendEnv })
  const option = await createOption(app, 1500)
  const answers = await enqueueMany(app, option, 2000)
  t.same(answers.filter((a) => a.statusCode !== 202).map((a) => a.body), [], 'all queued')
  const positions = answers.map((a) => a.json().position as number)
  t.equal(new Set(positions).size, 2000, 'distinct')
  t.same([...positions].sort((a, b) => a - b), Array.from({ length: 2000 }, (_, i) => i), 'the places 0 to 1,999')
  // The queue's own order: the requests' line numbers rise from head to tail (within a bundle job too).
  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(option))
  t.teardown(async () => { await queue.close() })
  const lines = (await queues.waitingData(queue, 5000)).flatMap((data) => requestsOfJob(data) ?? []).map((r) => r.line as number)
  t.equal(lines.length, 2000)
  t.ok(lines.every((line, i) => i === 0 || line > (lines[i - 1] as number)), 'in the order the queue holds them')

  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('not listening')
  const base = `http://127.0.0.1:${address.port}`
  const sample = answers.filter((_, i) => i % 100 === 50).map((a) => a.json() as { id: string, position: number })
  const streams = sample.map((s) => follow(base, option, s.id))
  await sleep(200)

  const started = Date.now()
  const estimates: Array<{ id: string, estimate: number | null, at: number }> = []
  await startTestWorker(t, config)
  await sleep(300)
  for (const s of sample) {
    const status = await statusOf(app, option, s.id)
    if (status.status === 'pending') estimates.push({ id: s.id, estimate: status.estimated_wait_ms as number | null, at: Date.now() })
  }
  await Promise.all(streams.map(async (s) => { await s.ended }))
  t.comment(`2,000 applied in ${Date.now() - started} ms`)
  for (const [i, s] of streams.entries()) {
    const never = s.positions.every((p, j) => j === 0 || p <= (s.positions[j - 1] as number))
    if (!never) t.fail(`positions rose: ${JSON.stringify(s.positions)}`)
    t.equal(s.positions[0], sample[i]?.position, 'the first event is the place it was given')
    t.same(s.outcome, await statusOf(app, option, sample[i]?.id as string), 'one outcome, equal to the status route')
  }
  // How good the estimate was: the actual wait against the estimated one.
  const errors = estimates.filter((e) => e.estimate !== null).map((e) => {
    const decided = Date.parse(String(streams.find((s) => s.outcome?.id === e.id)?.outcome?.created_at))
    return Math.abs((decided - e.at) - (e.estimate as number))
  }).sort((a, b) => a - b)
  if (errors.length > 0) t.comment(`estimated_wait_ms error over ${errors.length} buyers: median ${errors[Math.floor(errors.length / 2)]} ms, p90 ${errors[Math.floor(errors.length * 0.9)]} ms`)
})

eachQueueBackend(t, 'event streams: unknown is a JSON 404, decided sends only its outcome, a client that leaves leaves nothing behind', async (t, backendEnv) => {
  // Idle sockets close after REQUEST_TIMEOUT_MS: a stream must outlive it.
  const { app, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '100', REQUEST_TIMEOUT_MS: '1100', ...backendEnv } })
  const option = await createOption(app, 10)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('not listening')
  const base = `http://127.0.0.1:${address.port}`

  const unknown = await fetch(`${base}/ticket_options/${option}/purchases/${crypto.randomUUID()}/events`, { headers: { accept: 'text/event-stream' } })
  t.equal(unknown.status, 404)
  t.match(await unknown.json(), { code: 'PURCHASE_NOT_FOUND' })
  t.equal((await fetch(`${base}/ticket_options/${option}/reservations/${crypto.randomUUID()}/events`)).status, 404)

  const queued = (await enqueue(app, option)).json().id as string
  const leaving = follow(base, option, queued)
  await waitFor(() => app.outcomeStreams.size, (n) => n === 1, 5000)
  t.equal(app.queueLine.watchers, 1, 'the stream watches its option\'s line')
  t.ok(app.outcomeWaiter.waiting >= 1, 'and waits for its outcome')
  leaving.source.close()
  const left = await waitFor(() => [app.outcomeStreams.size, app.queueLine.watchers, app.outcomeWaiter.waiting], (c) => c.every((n) => n === 0), 5000)
  t.same(left, [0, 0, 0], 'no stream, line watcher or waiter is left once the client went away')
  t.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /^event_streams_open 0$/m)

  const patientId = (await enqueue(app, option)).json().id as string
  const patient = follow(base, option, patientId)
  let opens = 0
  patient.source.addEventListener('open', () => { opens++ })
  await sleep(2500) // more than twice REQUEST_TIMEOUT_MS without a word

  await startTestWorker(t, config)
  await patient.ended
  t.match(patient.outcome, { id: patientId, status: 'succeeded' }, 'a quiet stream still gets its outcome')
  t.equal(opens, 1, 'on the connection it opened: no reconnect')
  await waitFor(async () => (await statusOf(app, option, queued)).status, (s) => s === 'succeeded')
  const asCurl = await fetch(`${base}/ticket_options/${option}/purchases/${queued}/events`, { headers: { accept: '*/*' } })
  t.match(await asCurl.text(), /^event: outcome\ndata: \{/m, 'curl\'s Accept: */* gets the stream')
  const notStream = await fetch(`${base}/ticket_options/${option}/purchases/${queued}/events`, { headers: { accept: 'application/json' } })
  t.equal(notStream.status, 406, 'a client that refuses event streams is told so, never a 500')
  const decided = follow(base, option, queued)
  await decided.ended
  t.same(decided.positions, [], 'no position for a decided purchase')
  t.same(decided.outcome, await statusOf(app, option, queued), 'only its outcome')

  // A hold's stream works the same way.
  const held = await app.inject({ method: 'POST', url: `/ticket_options/${option}/reservations`, payload: { quantity: 1, user_id: USER }, headers: ASYNC })
  t.equal(held.statusCode, 202)
  const source = new EventSource(`${base}/ticket_options/${option}/reservations/${held.json().id as string}/events`)
  const outcome = await new Promise<Record<string, unknown>>((resolve) => {
    source.addEventListener('outcome', (e) => { source.close(); resolve(JSON.parse((e as MessageEvent).data as string) as Record<string, unknown>) })
  })
  t.match(outcome, { id: held.json().id, status: 'held' })
})

t.test('2,000 streams open at once on one API process: no connection or poll per stream, and every stream gets its outcome', async (t) => {
  const { app, config, sql, redis, databaseUrl, prefix } = await setUp(t, { worker: false })
  const option = await createOption(app, 2000)
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('not listening')
  const base = `http://127.0.0.1:${address.port}`
  const ids = (await enqueueMany(app, option, 2000)).map((a) => a.json().id as string)

  const database = new URL(databaseUrl).pathname.slice(1)
  const pgConnections = async (): Promise<number> => Number((await sql.query('select count(*) as n from pg_stat_activity where datname = $1', [database])).rows[0].n)
  const redisConnections = async (): Promise<number> => (await redis.client('LIST') as string).split('\n').filter((l) => l.includes(`name=${prefix}-api`)).length
  const before = { pg: await pgConnections(), redis: await redisConnections() }
  gc()
  const heapBefore = process.memoryUsage().heapUsed

  const streams = ids.map((id) => follow(base, option, id))
  await waitFor(() => app.outcomeStreams.size, (n) => n === 2000, 120_000)
  t.equal(app.outcomeStreams.size, 2000, '2,000 streams open')
  const during = { pg: await pgConnections(), redis: await redisConnections() }
  t.ok(during.pg <= before.pg + 10, `PostgreSQL connections stay bounded by the pool: ${before.pg} before, ${during.pg} with 2,000 streams`)
  t.equal(during.redis, before.redis, `Redis connections do not grow: ${during.redis}`)
  gc()
  const perStream = (process.memoryUsage().heapUsed - heapBefore) / 2000
  t.comment(`heap per open stream, server and client side together in this process (an upper bound for the server): ${Math.round(perStream / 1024 * 10) / 10} KiB`)

  await startTestWorker(t, config)
  await Promise.all(streams.map(async (s) => { await s.ended }))
  t.equal(streams.filter((s) => s.outcome?.status === 'succeeded').length, 2000, 'every stream got its outcome')
  await waitFor(() => app.outcomeStreams.size, (n) => n === 0, 10_000)
  t.same([app.outcomeStreams.size, app.queueLine.watchers], [0, 0], 'and ended')
})

t.test('two API processes hand out distinct places in one line', async (t) => {
  const environment = await setUp(t, { worker: false })
  const second = await buildTestApp(t, environment.config)
  const option = await createOption(environment.app, 1000)
  const answers = await Promise.all(Array.from({ length: 400 }, async (_, i) => await enqueue(i % 2 === 0 ? environment.app : second, option)))
  t.same(answers.filter((a) => a.statusCode !== 202).length, 0)
  const positions = answers.map((a) => a.json().position as number).sort((a, b) => a - b)
  t.same(positions, Array.from({ length: 400 }, (_, i) => i), 'places 0 to 399, each once, whichever API answered')
})
