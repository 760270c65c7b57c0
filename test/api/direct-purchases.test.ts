/**
 * The direct path (api/purchasing/direct-sales.ts): an API applies the
 * requests of an option with nobody in line itself, under the option's lease
 * (shared/queues/direct-lease.ts); a worker never starts a batch of the
 * option while the lease lives; a batch that fails is queued at the head of
 * the option's queue with its line numbers. On PostgreSQL queues there is no
 * direct path: every request is queued.
 */
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import pino from 'pino'
import type { FastifyInstance } from 'fastify'
import { DirectFences } from '../../api/purchasing/direct-fences'
import { DirectSales, LeaseRunningOutError, type DirectResult, type DirectSalesDeps } from '../../api/purchasing/direct-sales'
import { PurchaseQueues } from '../../api/purchasing/purchase-queues'
import { SaleService } from '../../api/purchasing/sale-service'
import { GroupCommit } from '../../shared/purchases/group-commit'
import type { LineMessage } from '../../shared/purchases/purchase-outcomes'
import type { PurchaseRequest, SaleRequest } from '../../shared/purchases/sale-request'
import { directFenceKey, directLeaseKey, lineAppliedKey, lineTicketKey, purchaseOutcomesChannel, purchaseQueueName } from '../../shared/queues/queue-names'
import { createPool, DedicatedConnection, withTransaction, type Db } from '../../shared/db'
import { applySaleBatch, AT_ONCE_SESSION } from '../../shared/purchases/sale-store'
import { createTicketOption } from '../../shared/ticket-options'
import { buildTestApp, buy, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { createTestEnvironment, eachQueueBackend, unbalancedOptions } from '../support/environment'
import { sample } from '../support/prometheus-text'
import { sleep, waitFor } from '../support/wait'

const silent = pino({ level: 'silent' })

eachQueueBackend(t, 'a purchase of an option with nobody in line, and no worker running', async (t, backendEnv) => {
  const { app, redis, prefix, openQueues } = await setUp(t, { worker: false, env: { ...backendEnv, PURCHASE_WAIT_MS: '300' } })
  const id = await createOption(app, 5)
  const first = await buy(app, id, { quantity: 2 })
  // Past the first batch's put-off release, so the second claims (and takes a line number) too.
  await sleep(50)
  const second = await buy(app, id, { quantity: 2 })
  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  const waiting = await queues.waitingData(queue, 10)
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  if (backendEnv.QUEUE_BACKEND === 'redis') {
    t.same([first.statusCode, second.statusCode], [201, 201], 'the API applied both itself')
    t.equal(second.json().status, 'succeeded')
    t.same(waiting, [], 'nothing was queued')
    t.same([await redis.get(lineTicketKey(prefix, id)), await redis.get(lineAppliedKey(prefix, id))], ['2', '2'], 'each took a line number, and both are applied')
    t.equal(await waitFor(async () => await redis.exists(directLeaseKey(prefix, id)), (n) => n === 0), 0, 'the lease is dropped')
    t.equal(sample(metrics, 'direct_requests_total', { result: 'applied' }), 2)
    const line = (await app.inject({ method: 'GET', url: `/ticket_options/${id}/queue` })).json()
    t.equal(line.waiting, 0, 'the line is empty')
  } else {
    t.same([first.statusCode, second.statusCode], [202, 202], 'queued: no direct path on PostgreSQL queues')
    t.equal(waiting.length, 2)
    t.equal(sample(metrics, 'direct_requests_total', { result: 'applied' }), undefined)
  }
})

t.test('a direct batch publishes its outcomes and applied line, as a worker\'s batch does (for other APIs\' waiters and lines)', async (t) => {
  const { app, openQueues } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  const heard: LineMessage[] = []
  await openQueues().subscribeLineMessages((message) => { heard.push(message) }, () => {})
  const res = await buy(app, id, { quantity: 2 })
  t.equal(res.statusCode, 201)
  const message = await waitFor(() => heard.find((m) => m.type === 'applied' && m.ticketOptionId === id), (m) => m !== undefined, 5000, 20)
  t.match(message, { type: 'applied', ticketOptionId: id, appliedLine: 1, count: 1, outcomes: [{ id: res.json().id, status: 'succeeded', quantity: 2 }] })
})

t.test('direct batches of the same milliseconds are announced as one message; what is pending when the API closes is announced then', async (t) => {
  const { make, request, backend, id } = await directSales(t)
  const heard: LineMessage[] = []
  await backend.subscribeLineMessages((message) => { heard.push(message) }, () => {})
  const sales = make({ announceDelayMs: 200 })
  const [a, b] = [request(), request()]
  await sales.apply(a)
  await sales.apply(b)
  const message = await waitFor(() => heard.find((m) => m.type === 'applied' && m.ticketOptionId === id), (m) => m !== undefined, 5000, 10)
  t.match(message, { type: 'applied', ticketOptionId: id, appliedLine: 2, count: 2, outcomes: [{ id: a.purchaseId }, { id: b.purchaseId }] })
  const c = request()
  const closing = make({ announceDelayMs: 60_000 })
  await closing.apply(c)
  await closing.close()
  t.ok(await waitFor(() => heard.some((m) => m.type === 'applied' && m.outcomes.some((o) => o.id === c.purchaseId)), (found) => found, 5000, 10), 'announced on close, not a minute later')
})

t.test('an API that closes right after a direct purchase still announces it', async (t) => {
  const { app, openQueues } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '300' } })
  const id = await createOption(app, 5)
  const heard: LineMessage[] = []
  await openQueues().subscribeLineMessages((message) => { heard.push(message) }, () => {})
  const res = await buy(app, id)
  t.equal(res.statusCode, 201)
  await app.close()
  t.ok(await waitFor(() => heard.some((m) => m.type === 'applied' && m.outcomes.some((o) => o.id === res.json().id)), (found) => found, 3000, 10), 'heard')
})

t.test('an API alone on the outcome channel tells its direct outcomes to itself, publishing none; once another process listens, they are published', async (t) => {
  const { app, redis, prefix, openQueues } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '5000' } })
  const channel = purchaseOutcomesChannel(prefix)
  const monitor = await redis.monitor()
  t.teardown(() => { monitor.disconnect() })
  const published: string[] = []
  monitor.on('monitor', (_time: string, args: string[]) => {
    if (args[0]?.toLowerCase() === 'publish' && args[1] === channel && args[2]?.startsWith('{"type":"listening"') !== true) published.push(args[2] ?? '')
  })
  const id = await createOption(app, 100)
  await sleep(300) // its first count of the channel's subscribers

  // A keyed request that follows another with the same key waits for its outcome: told in-process, not after the wait limit.
  const [leader, follower] = await Promise.all([buy(app, id, { key: 'alone' }), buy(app, id, { key: 'alone' })])
  t.same([leader.statusCode, follower.statusCode], [201, 201])
  t.equal(follower.body, leader.body, 'the same purchase')
  t.ok(Math.max(leader.tookMs, follower.tookMs) < 2500, `both answered well within the wait limit (${leader.tookMs}, ${follower.tookMs} ms)`)
  t.equal((await buy(app, id)).statusCode, 201)
  await sleep(100) // past the announcements' delay
  t.same(published, [], 'nothing published: nobody else would hear it')

  // Another API subscribes and says so: published from then on, without waiting for the next count.
  const heard: LineMessage[] = []
  await openQueues().subscribeLineMessages((message) => { heard.push(message) }, () => {})
  await sleep(100)
  const bought = await buy(app, id)
  t.equal(bought.statusCode, 201)
  t.ok(await waitFor(() => heard.some((m) => m.type === 'applied' && m.outcomes.some((o) => o.id === bought.json().id)), (found) => found, 3000, 10), 'the other process heard it')
  // MONITOR's copy of the PUBLISH comes on another connection than the message itself: it may come second.
  t.ok(await waitFor(() => published.length > 0, (found) => found, 3000, 10), 'published')
})

t.test('a keyed request that follows one being applied directly does not queue its job again: the option stays on the direct path', async (t) => {
  const { app, openQueues } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '3000' } })
  const id = await createOption(app, 100)
  t.equal((await buy(app, id)).statusCode, 201, 'the option goes direct')
  for (let round = 0; round < 5; round++) {
    const [leader, follower] = await Promise.all([buy(app, id, { key: `twice-${round}` }), buy(app, id, { key: `twice-${round}` })])
    t.same([leader.statusCode, follower.statusCode], [201, 201], `round ${round}: both answered`)
    t.equal(follower.body, leader.body, `round ${round}: the same purchase`)
  }
  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  t.same(await queues.waitingData(queue, 10), [], 'no job was queued for a purchase applied directly')
  const after = await buy(app, id)
  t.equal(after.statusCode, 201, 'with no worker running, the next purchase still goes direct')
})

t.test('a worker alone on the outcome channel still publishes its batches, and advances their applied line', async (t) => {
  const { redis, prefix, openQueues } = await createTestEnvironment(t)
  const queues = openQueues() // a worker's backend, subscribed as a test would
  const heard: LineMessage[] = []
  await queues.subscribeLineMessages((message) => { heard.push(message) }, () => {})
  await sleep(300) // counted alone
  const id = randomUUID()
  const outcome = { id: randomUUID(), ticket_option_id: id, user_id: USER, quantity: 1, status: 'succeeded' as const, reason: null, available: null, used: null, reservation_id: null, cancelled_at: null, created_at: new Date().toISOString() }
  await queues.publishApplied({ ticketOptionId: id, appliedLine: 3, count: 1, at: Date.now(), outcomes: [outcome] })
  t.equal(await redis.get(lineAppliedKey(prefix, id)), '3', 'its line advanced: only the release of an API\'s direct lease does that for it')
  t.ok(await waitFor(() => heard.some((m) => m.type === 'applied' && m.ticketOptionId === id), (found) => found, 3000, 10), 'published, and heard back')
})

t.test('a subscriber that does not say it listens (an older API) is found by the next count of the channel', async (t) => {
  const { app, redis, prefix } = await setUp(t, { worker: false })
  const id = await createOption(app, 100)
  await sleep(300)
  const subscriber = redis.duplicate()
  t.teardown(() => { subscriber.disconnect() })
  const heard: string[] = []
  subscriber.on('message', (_channel: string, message: string) => { heard.push(message) })
  await subscriber.subscribe(purchaseOutcomesChannel(prefix))
  // Within a count's period (a second) and the announcements' delay, its purchases reach the subscriber.
  const reached = await waitFor(async () => {
    const res = await buy(app, id)
    await sleep(50) // past the announcements' delay
    return res.statusCode === 201 && heard.some((m) => m.includes(res.json().id as string))
  }, (found) => found, 5000, 100)
  t.ok(reached, 'heard by the plain subscriber')
})

t.test('a lease held elsewhere: the purchase queues behind it, and the worker waits until the lease ends', async (t) => {
  const { app, redis, prefix, config, sql } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  t.equal((await buy(app, id)).statusCode, 201, 'the option\'s first purchase goes direct')
  // Another API's batch in flight: its lease, and the line number it took.
  await redis.set(directLeaseKey(prefix, id), 'another-api', 'PX', 60_000)
  await redis.incr(lineTicketKey(prefix, id))
  await startTestWorker(t, config)
  const queued = app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { prefer: 'respond-async' } })
  const res = await queued
  t.equal(res.statusCode, 202)
  t.equal(res.json().position, 1, 'behind the leased batch')
  await sleep(600)
  const count = async (): Promise<number> => Number((await sql.query('select count(*) from purchases where ticket_option_id = $1', [id])).rows[0].count)
  t.equal(await count(), 1, 'the worker does not apply it while the lease lives')
  await redis.del(directLeaseKey(prefix, id))
  t.equal(await waitFor(count, (n) => n === 2), 2, 'and applies it once the lease is gone')
  t.same(await unbalancedOptions(sql), [])
})

t.test('an API that died holding a lease: the worker goes on once the lease expires', async (t) => {
  const { app, redis, prefix, config, sql } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  await redis.set(directLeaseKey(prefix, id), 'a-dead-api', 'PX', 800)
  await redis.incr(lineTicketKey(prefix, id))
  await startTestWorker(t, config)
  const started = Date.now()
  const res = await buy(app, id)
  t.equal(res.statusCode, 201, 'answered once the worker applied it')
  t.ok(Date.now() - started >= 500, `not before the lease ran out (${Date.now() - started} ms)`)
  t.equal(res.json().status, 'succeeded')
  t.same(await unbalancedOptions(sql), [])
})

t.test('a direct batch that holds the row lock too late is rolled back, queued ahead of later requests, and applied first', async (t) => {
  const { app, config, sql } = await setUp(t, { env: { DIRECT_LEASE_MS: '400' } })
  // A second API on the same stores: its request meets the first one's lease and queues.
  const other = await buildTestApp(t, config)
  const id = await createOption(app, 5)
  const blocker = await sql.connect()
  await blocker.query('begin')
  await blocker.query('select 1 from ticket_options where id = $1 for update', [id])
  const first = buy(app, id, { quantity: 2 })
  await sleep(100) // the first has its lease and waits on the row
  const second = buy(other, id, { quantity: 1 })
  await sleep(250) // past half the lease
  await blocker.query('commit')
  blocker.release()
  const [a, b] = await Promise.all([first, second])
  t.same([a.statusCode, b.statusCode], [201, 201])
  const { rows } = await sql.query<{ id: string }>('select id::text from purchases where ticket_option_id = $1 order by seq', [id])
  t.same(rows.map((r) => r.id), [a.json().id, b.json().id], 'applied in line order')
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(metrics, 'direct_requests_total', { result: 'queued' }), 1, 'counted as a direct batch queued instead')
  t.same(await unbalancedOptions(sql), [])
})

/** DirectSales alone on the test's stores; `make` builds one with the parts a test breaks on purpose. */
async function directSales (t: Test) {
  const { config, sql, app, openQueues, redis, prefix } = await setUp(t, { worker: false })
  const backend = openQueues()
  const db = createPool(config.databaseUrl, 2, silent)
  t.teardown(async () => { await db.end() })
  const make = (overrides: Partial<DirectSalesDeps> = {}): DirectSales => new DirectSales({
    backend,
    transactions: new GroupCommit(db, 1),
    queues: { enqueueAhead: async () => { throw new Error('not expected') } },
    leaseMs: config.directLeaseMs,
    maxBatch: 3,
    log: silent,
    ...overrides,
  })
  const id = await createOption(app, 10)
  let n = 0
  const request = (): PurchaseRequest => ({ kind: 'purchase', purchaseId: `00000000-0000-4000-8000-${String(++n).padStart(12, '0')}`, ticketOptionId: id, userId: USER, quantity: 1, requestId: `r${n}`, enqueuedAt: Date.now() })
  const purchases = async (): Promise<number> => Number((await sql.query('select count(*) from purchases')).rows[0].count)
  return { make, id, request, redis, prefix, backend, purchases, db, config, sql, app }
}

t.test('DirectSales: a batch that failed and could not be queued either rejects, and drops its lease', async (t) => {
  const { make, request, redis, prefix, id, purchases } = await directSales(t)
  const failure = new Error('the queue store is gone')
  const sales = make({ leaseMs: 100, transactions: { idle: true, run: async () => { throw new LeaseRunningOutError('late') } }, queues: { enqueueAhead: async () => { throw failure } } })
  await t.rejects(sales.apply(request()), failure)
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 0, 'the lease is dropped')
  t.equal(await purchases(), 0, 'nothing was written')
})

t.test('DirectSales: a claim Redis cannot answer declines (the queue path answers then); the next claim of that option is asked before its row is locked', async (t) => {
  const { make, request, backend, purchases, db } = await directSales(t)
  const group = new GroupCommit(db, 1)
  let transactions = 0
  const sales = make({
    backend: { ...backend, claimDirect: async () => { throw new Error('no Redis') } },
    transactions: { idle: true, run: async (work) => { transactions++; return await group.run(work) } },
  })
  t.same(await sales.apply(request()), { kind: 'declined' } satisfies DirectResult)
  t.equal(transactions, 1, 'the first claim went out beside the transaction (which wrote nothing)')
  t.same(await sales.apply(request()), { kind: 'declined' } satisfies DirectResult)
  t.equal(transactions, 1, 'after a declined claim, the next is asked first: no transaction')
  t.equal(await purchases(), 0)
})

t.test('DirectSales: a release that fails still answers what committed; the lease then runs out on its own', async (t) => {
  const { make, request, backend, redis, prefix, id, purchases } = await directSales(t)
  const sales = make({ leaseMs: 300, backend: { ...backend, releaseDirect: async () => { throw new Error('no Redis') } } })
  const result = await sales.apply(request())
  t.equal(result.kind, 'applied')
  t.equal(await purchases(), 1)
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 1, 'the lease is still there')
  t.same(await sales.apply(request()), { kind: 'declined' }, 'and the option\'s next request queues meanwhile (its line is not applied)')
  await sleep(350)
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 0, 'until it expires')
})

/** A backend that records each claim's arguments and each release, and otherwise is the test's own. */
function recording (backend: DirectSalesDeps['backend'], claimFails: (n: number) => boolean = () => false) {
  const claims: Array<Parameters<DirectSalesDeps['backend']['claimDirect']>> = []
  const releases: Array<Parameters<DirectSalesDeps['backend']['releaseDirect']>> = []
  return {
    claims,
    releases,
    backend: {
      ...backend,
      claimDirect: async (...args: Parameters<DirectSalesDeps['backend']['claimDirect']>) => {
        claims.push(args)
        if (claimFails(claims.length)) throw new Error('no Redis')
        return await backend.claimDirect(...args)
      },
      releaseDirect: async (...args: Parameters<DirectSalesDeps['backend']['releaseDirect']>) => {
        releases.push(args)
        await backend.releaseDirect(...args)
      },
    },
  }
}

t.test('DirectSales: a batch\'s release waits for the option\'s next claim, which does it first; alone, or on close, it goes by itself', async (t) => {
  const { make, request, backend, redis, prefix, id, purchases } = await directSales(t)
  const { claims, releases, backend: counted } = recording(backend)
  const sales = make({ backend: counted, releasePutOffMs: 60_000 })
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal(claims[0]?.[4], undefined, 'the first claim had nothing to release')
  t.same(claims[1]?.[4], { token: claims[0]?.[3], appliedLine: 1 }, 'the second claim released the first batch')
  t.same(releases, [], 'no release of its own')
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 1, 'the second batch\'s lease is held meanwhile')
  await sales.close()
  t.same(releases, [[id, claims[1]?.[3], 2]], 'released on close')
  t.same([await redis.exists(directLeaseKey(prefix, id)), await redis.get(lineAppliedKey(prefix, id))], [0, '2'], 'the lease is dropped, both lines applied')

  const soon = recording(backend)
  const alone = make({ backend: soon.backend, releasePutOffMs: 5 })
  t.equal((await alone.apply(request())).kind, 'applied')
  t.equal(await waitFor(async () => await redis.exists(directLeaseKey(prefix, id)), (n) => n === 0, 2000, 5), 0, 'with no next claim, released after the moment')
  t.same(soon.releases, [[id, soon.claims[0]?.[3], 3]])
  t.equal(await purchases(), 3)
})

t.test('DirectSales: a claim that fails while it carries a release put off sends that release on its own', async (t) => {
  const { make, request, backend, redis, prefix, id } = await directSales(t)
  const { claims, releases, backend: failing } = recording(backend, (n) => n === 2)
  const sales = make({ backend: failing, releasePutOffMs: 60_000 })
  t.equal((await sales.apply(request())).kind, 'applied')
  t.same(await sales.apply(request()), { kind: 'declined' } satisfies DirectResult, 'the claim failed: queued instead')
  t.same(claims[1]?.[4], { token: claims[0]?.[3], appliedLine: 1 })
  t.same(releases, [[id, claims[0]?.[3], 1]], 'the first batch released on its own')
  t.same([await redis.exists(directLeaseKey(prefix, id)), await redis.get(lineAppliedKey(prefix, id))], [0, '1'], 'its lease is dropped and its line applied')
})

t.test('DirectSales: requests gathered at once go in chunks of at most maxBatch; once one chunk is declined, so are the rest', async (t) => {
  const { make, request, purchases } = await directSales(t)
  const batches: Array<[string, number]> = []
  const sales = make({ onBatch: (result, n) => { batches.push([result, n]) } })
  const results = await Promise.all(Array.from({ length: 7 }, async () => await sales.apply(request())))
  t.same(results.map((r) => r.kind), Array(7).fill('applied'))
  t.same(batches, [['applied', 3], ['applied', 3], ['applied', 1]], 'three transactions')
  t.equal(await purchases(), 7)
})

t.test('DirectSales: once a chunk is declined (another API took the lease meanwhile), the rest of the gathered requests are too', async (t) => {
  const { make, request, backend, purchases } = await directSales(t)
  const batches: Array<[string, number]> = []
  let claims = 0
  const sales = make({
    onBatch: (result, n) => { batches.push([result, n]) },
    backend: { ...backend, claimDirect: async (...args) => ++claims === 2 ? null : await backend.claimDirect(...args) },
  })
  const results = await Promise.all(Array.from({ length: 9 }, async () => await sales.apply(request())))
  t.same(results.map((r) => r.kind), [...Array(3).fill('applied'), ...Array(6).fill('declined')])
  t.same(batches, [['applied', 3], ['declined', 3], ['declined', 3]])
  t.equal(claims, 2, 'no claim after the declined one')
  t.equal(await purchases(), 3)
})

/** A pool for batches at once, and transactions that count how many batches went the usual way. */
function atOnceParts (t: Test, db: ReturnType<typeof createPool>, databaseUrl: string) {
  const atOnce = new DedicatedConnection(createPool(databaseUrl, 1, silent, AT_ONCE_SESSION))
  t.teardown(async () => { await atOnce.end() })
  const group = new GroupCommit(db, 1)
  const counted = { usual: 0 }
  const transactions: DirectSalesDeps['transactions'] = {
    get idle () { return group.idle },
    run: async (work) => { counted.usual++; return await group.run(work) },
  }
  return { atOnce, transactions, counted }
}

/** Runs `work` while another transaction holds the option's row lock, for `ms`; its result once the lock is let go. */
async function whileRowLocked<T> (t: Test, sql: ReturnType<typeof createPool>, id: string, ms: number, work: () => Promise<T>): Promise<T> {
  const blocker = await sql.connect()
  t.teardown(() => { blocker.release() })
  await blocker.query('begin')
  await blocker.query('select 1 from ticket_options where id = $1 for update', [id])
  const result = work()
  await sleep(ms)
  await blocker.query('commit')
  return await result
}

t.test('DirectSales: a lone batch of purchases goes at once when this API left the option as it is; after someone else sold, the usual way, for a while', async (t) => {
  const { make, request, purchases, db, config, sql, id } = await directSales(t)
  const { atOnce, transactions, counted } = atOnceParts(t, db, config.databaseUrl)
  const sales = make({ atOnce, transactions })
  const statusOf = (r: DirectResult): string => r.kind === 'applied' ? (r.outcome as { status: string }).status : r.kind

  t.equal(statusOf(await sales.apply(request())), 'succeeded')
  t.equal(counted.usual, 1, 'the option\'s first batch goes the usual way (nothing known of it)')
  t.equal(statusOf(await sales.apply(request())), 'succeeded')
  t.equal(statusOf(await sales.apply(request())), 'succeeded')
  t.equal(counted.usual, 1, 'the next ones at once')

  // A worker (or another API) sells meanwhile.
  await withTransaction(sql, async (client) => await applySaleBatch(client, id, [request()]))
  t.equal(statusOf(await sales.apply(request())), 'succeeded')
  t.equal(counted.usual, 2, 'the option was not as this API left it: the usual way')
  t.equal(statusOf(await sales.apply(request())), 'succeeded')
  t.equal(counted.usual, 3, 'and the usual way for a while, though it is as this API left it again')

  t.equal(await purchases(), 6, 'each purchase written once')
  t.same((await sql.query('select allocation from ticket_options where id = $1', [id])).rows[0], { allocation: 4 })
  t.same(await unbalancedOptions(sql), [])
})

t.test('DirectSales: a batch at once whose row lock comes after half the lease writes nothing, and is queued ahead with its line number', async (t) => {
  const { make, request, purchases, db, config, sql, id, redis, prefix } = await directSales(t)
  const { atOnce, transactions, counted } = atOnceParts(t, db, config.databaseUrl)
  const queued: PurchaseRequest[][] = []
  const sales = make({ atOnce, transactions, leaseMs: 400, queues: { enqueueAhead: async (batch) => { queued.push(batch as PurchaseRequest[]) } } })
  t.equal((await sales.apply(request())).kind, 'applied', 'learns the option')
  // Past its put-off release, so the next batch claims: on the lease still held, a late statement is retried the usual way
  // (applyOnHeldLease), which by then finds the row free.
  t.equal(await waitFor(async () => await redis.exists(directLeaseKey(prefix, id)), (n) => n === 0, 3000, 5), 0, 'the lease is dropped')

  const late = await whileRowLocked(t, sql, id, 300, async () => await sales.apply(request())) // past half the lease
  t.same(late, { kind: 'queued', line: 2 } satisfies DirectResult)
  t.equal(counted.usual, 1, 'it went at once')
  t.same(queued.map((batch) => batch.map((r) => r.line)), [[2]], 'queued ahead, under its line number')
  t.equal(await purchases(), 1, 'nothing written')
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 0, 'the lease is dropped')
})

t.test('DirectSales: an option with a per-user limit, and a batch that is not only purchases, go the usual way', async (t) => {
  const { make, db, config, sql, app } = await directSales(t)
  const { atOnce, transactions, counted } = atOnceParts(t, db, config.databaseUrl)
  const sales = make({ atOnce, transactions })
  const limited = (await createTicketOption(sql, { name: 'limited', desc: '', allocation: 10, maxPerPurchase: null, maxPerUser: 5 })).id
  const buy = (ticketOptionId: string): PurchaseRequest => ({ kind: 'purchase', purchaseId: randomUUID(), ticketOptionId, userId: USER, quantity: 1, requestId: 'r', enqueuedAt: Date.now() })
  for (let i = 0; i < 3; i++) t.equal((await sales.apply(buy(limited))).kind, 'applied')
  t.equal(counted.usual, 3, 'every batch of the limited option')

  const open = await createOption(app, 10)
  t.equal((await sales.apply(buy(open))).kind, 'applied')
  const hold = await sales.apply({ kind: 'hold', reservationId: randomUUID(), holdSeconds: 60, ticketOptionId: open, userId: USER, quantity: 1, requestId: 'h', enqueuedAt: Date.now() })
  t.match(hold, { kind: 'applied', outcome: { status: 'held' } })
  t.equal(counted.usual, 5, 'a hold too')
  t.same(await unbalancedOptions(sql), [])
})

t.test('DirectSales: a lone batch of purchases on the lease still held from the option\'s last batch needs no claim; after a quarter of the lease, it claims again', async (t) => {
  const { make, request, purchases, db, config, sql, id, redis, prefix, backend } = await directSales(t)
  const { atOnce, transactions, counted } = atOnceParts(t, db, config.databaseUrl)
  const { claims, releases, backend: recorded } = recording(backend)
  // A quarter of this lease is long enough for three batches on a busy machine.
  const sales = make({ atOnce, transactions, backend: recorded, releasePutOffMs: 60_000, leaseMs: 4000 })
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal(claims.length, 1, 'one claim for three batches')
  t.equal(counted.usual, 1, 'the first went the usual way, the next two at once')
  t.equal(await redis.get(directLeaseKey(prefix, id)), claims[0]?.[3], 'on the first claim\'s lease, held meanwhile')
  await sleep(1100) // past a quarter of the lease
  t.equal((await sales.apply(request())).kind, 'applied')
  t.equal(claims.length, 2, 'then a claim again')
  t.same(claims[1]?.[4], { token: claims[0]?.[3], appliedLine: 1 }, 'which carried the first lease\'s release')
  t.same(releases, [])
  t.equal(await purchases(), 4)
  t.equal(await redis.get(lineTicketKey(prefix, id)), '2', 'a line number per claim: the batches on a held lease took none')
  t.same(await unbalancedOptions(sql), [])
})

t.test('DirectSales: a request queued while another API holds the lease from its last batch raises the fence; that API\'s next purchase then queues behind it', async (t) => {
  const { make, request, purchases, db, config, sql, id, redis, prefix, backend, app } = await directSales(t)
  const { atOnce, transactions } = atOnceParts(t, db, config.databaseUrl)
  const { claims, backend: recorded } = recording(backend)
  // A lease long enough that its holder would use it for the third purchase, were the fence not up.
  const holder = make({ atOnce, transactions, backend: recorded, releasePutOffMs: 60_000, leaseMs: 60_000 })
  t.equal((await holder.apply(request())).kind, 'applied')
  t.equal((await holder.apply(request())).kind, 'applied')
  t.equal(claims.length, 1, 'the second went on the lease still held')
  const token = claims[0]?.[3]

  // A buyer on another API meets that lease: its purchase is queued, once the fence is up.
  const queued = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { prefer: 'respond-async' } })
  t.equal(queued.statusCode, 202)
  t.same((await sql.query('select token from direct_fences where ticket_option_id = $1', [id])).rows, [{ token }], 'the fence of that lease is up')
  t.equal(await waitFor(async () => await redis.get(directFenceKey(prefix, id)), (v) => v === token), token, 'and marked in Redis')
  t.same(await backend.takeLineNumbers(id, 0), { last: 2, unfencedLease: null }, 'so later requests need not raise it again')

  t.same(await holder.apply(request()), { kind: 'declined' } satisfies DirectResult, 'the holder\'s next purchase does not pass the queued one: it queues behind it')
  t.equal(claims.length, 2, 'it asked Redis')
  t.same(claims[1]?.[4], { token, appliedLine: 1 }, 'with the release of its lease')
  t.equal(await redis.exists(directLeaseKey(prefix, id)), 0, 'the lease is dropped, so a worker can apply the line')
  t.equal(await purchases(), 2, 'only the two applied before the queued one')
})

t.test('DirectSales: a batch on a held lease whose row lock comes too late writes nothing and goes the usual way, with a claim', async (t) => {
  const { make, request, purchases, db, config, sql, id, backend } = await directSales(t)
  const { atOnce, transactions, counted } = atOnceParts(t, db, config.databaseUrl)
  const { claims, backend: recorded } = recording(backend)
  // The held lease's quarter (500 ms) outlasts the first batch on a busy machine; the row stays locked past its half.
  const sales = make({ atOnce, transactions, backend: recorded, releasePutOffMs: 60_000, leaseMs: 2000 })
  t.equal((await sales.apply(request())).kind, 'applied')

  const late = await whileRowLocked(t, sql, id, 1200, async () => await sales.apply(request()))
  t.equal(late.kind, 'applied', 'applied the usual way')
  t.equal(claims.length, 2, 'after a claim')
  t.same(claims[1]?.[4], { token: claims[0]?.[3], appliedLine: 1 }, 'which carried the held lease\'s release')
  t.equal(counted.usual, 1, 'at once, under the new lease')
  t.equal(await purchases(), 2, 'written once')
  t.same(await unbalancedOptions(sql), [])
})

t.test('a request queued while an API holds the option\'s lease, whose fence cannot be recorded: 503, and nothing is queued', async (t) => {
  const { app, redis, prefix, sql, openQueues } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  await redis.set(directLeaseKey(prefix, id), 'another-api', 'PX', 60_000)
  await sql.query('drop table direct_fences')
  const res = await buy(app, id)
  t.equal(res.statusCode, 503)
  t.match(res.json(), { code: 'SERVICE_UNAVAILABLE' })
  const queues = openQueues()
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  t.same(await queues.waitingData(queue, 10), [], 'nothing queued')
  t.equal(await redis.get(directFenceKey(prefix, id)), null, 'nor marked as fenced')
})

t.test('a purchase whose direct batch was queued instead and applied before its wait began is answered from PostgreSQL at once, not at the wait limit', async (t) => {
  const { app } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  const waitMs = 3000
  // Its batch failed and was queued at the head; a worker applied it before the answer came back here.
  const sales = await serviceWithQueuedDirectBatches(t, app, waitMs, async (request) => {
    await withTransaction(app.db, async (client) => await applySaleBatch(client, id, [request]))
  })
  const started = Date.now()
  const result = await sales.purchase({ ticketOptionId: id, userId: USER, quantity: 2, requestId: 'late-wait' })
  t.ok(Date.now() - started < waitMs / 2, `answered in ${Date.now() - started} ms`)
  t.match(result, { kind: 'recorded', record: { status: 'succeeded', quantity: 2 } })
  t.equal(app.outcomeWaiter.waiting, 0, 'its wait ended with the answer')
})

t.test('a purchase whose direct batch was queued instead while PostgreSQL cannot be read waits for the worker\'s message, not an error', async (t) => {
  const { app } = await setUp(t, { worker: false })
  const id = await createOption(app, 5)
  // Reading a purchase fails, as when PostgreSQL failed the direct batch; the rest goes through.
  const failingReads = {
    query: async (text: unknown, values?: unknown[]) => {
      if (typeof text === 'string' && text.includes('from purchases where id')) throw new Error('Connection terminated unexpectedly')
      return await app.db.query(text as string, values)
    },
  } as unknown as Db
  let queued: SaleRequest | undefined
  const sales = await serviceWithQueuedDirectBatches(t, app, 3000, async (request) => { queued = request }, failingReads)
  const answer = sales.purchase({ ticketOptionId: id, userId: USER, quantity: 1, requestId: 'late-wait-down' })
  const request = await waitFor(() => queued, (q) => q !== undefined) as PurchaseRequest
  await sleep(50)
  // A worker applied it once PostgreSQL was back, and told every API.
  const record = { id: request.purchaseId, ticket_option_id: id, user_id: USER, quantity: 1, status: 'succeeded' as const, reason: null, available: null, used: null, reservation_id: null, cancelled_at: null, created_at: new Date().toISOString() }
  await app.queueBackend.publishApplied({ ticketOptionId: id, appliedLine: 1, count: 1, at: Date.now(), outcomes: [record] })
  t.match(await answer, { kind: 'recorded', record: { id: request.purchaseId, status: 'succeeded' } })
})

/**
 * A sale service on the test app's stores whose direct path always answers "queued at the
 * head" after `apply` ran (its batch failed); `db` is where it reads outcomes.
 */
async function serviceWithQueuedDirectBatches (t: Test, app: FastifyInstance, waitMs: number, apply: (request: SaleRequest) => Promise<void>, db: Db = app.db): Promise<SaleService> {
  const log = pino({ level: 'silent' })
  const queues = new PurchaseQueues(app.queueBackend, log)
  t.teardown(async () => { await queues.close() })
  const direct = { apply: async (request: SaleRequest): Promise<DirectResult> => { await apply(request); return { kind: 'queued', line: 1 } } } as unknown as DirectSales
  return new SaleService({
    db, queues, waiter: app.outcomeWaiter, line: app.queueLine, fences: new DirectFences(app.db, app.queueBackend, log), waitMs, log, idempotencyKeyTtlHours: 24, direct,
  })
}
