/**
 * The service on a real Redis Cluster (REDIS_CLUSTER_NODES): 3 masters with a
 * replica each, built once for this file from redis-server on loopback ports
 * (test/support/redis-cluster.ts) and torn down after it. The core routes,
 * 202 and its settling, the line, holds, health and metrics; options' queues
 * spread over every master; a burst on 2 APIs and 2 workers; and, last (it
 * leaves the cluster with one master fewer replicated), a master killed with
 * SIGKILL in the middle of a burst.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { activeOptionsKey, purchaseOutcomesChannel, purchaseQueueName, queueWakeupChannel } from '../../shared/queues/queue-names'
import { buy, createOption, setUp, startTestWorker, TEST_USER } from '../support/app'
import { createTestEnvironment, QUEUED, unbalancedOptions } from '../support/environment'
import { callJson, countByStatus, runPurchases, type PurchaseSpec } from '../support/load'
import { sample } from '../support/prometheus-text'
import { freePort } from '../support/free-port'
import { coverageEnv, nodeArgs, ROOT, startProcess } from '../support/processes'
import { checkBooks, createOptionOver, fireBurst, settlePending } from '../support/purchase-burst'
import { startRedisCluster, type RedisCluster } from '../support/redis-cluster'
import { sleep, waitFor } from '../support/wait'

let cluster: RedisCluster

t.before(async () => {
  cluster = await startRedisCluster(t)
})

/** Every key of this prefix on one node (SCAN, the node's own keys only). */
async function keysOn (port: number, pattern: string): Promise<string[]> {
  const node = cluster.connect(port)
  await node.connect()
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, found] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = next
    keys.push(...found)
  } while (cursor !== '0')
  node.disconnect()
  return keys
}

async function status (app: FastifyInstance, optionId: string, purchaseId: string): Promise<string> {
  const res = await app.inject({ method: 'GET', url: `/ticket_options/${optionId}/purchases/${purchaseId}` })
  return (res.json() as { status: string }).status
}

t.test('the core routes on a Redis Cluster', async (t) => {
  const { app, config } = await setUp(t, { env: { REDIS_CLUSTER_NODES: cluster.seeds, DASHBOARD_USER: 'operator', DASHBOARD_PASSWORD: 'cluster-dashboard-pw' } })
  t.equal(config.queueBackend, 'redis', 'REDIS_CLUSTER_NODES alone puts the queues on Redis')
  t.equal(config.redisClusterNodes?.length, 6)
  const optionId = await createOption(app, 3)
  const statuses = []
  for (let i = 0; i < 4; i++) statuses.push((await buy(app, optionId)).statusCode)
  t.same(statuses, [201, 201, 201, 409], 'three sold, then 409')
  // An Idempotency-Key (PostgreSQL) and the queue's length for backpressure (BullMQ's count) on the cluster.
  const other = await createOption(app, 5)
  const first = await buy(app, other, { key: 'cluster-key-1' })
  const again = await buy(app, other, { key: 'cluster-key-1' })
  t.same([first.statusCode, again.statusCode], [201, 201])
  t.equal((again.json() as { id: string }).id, (first.json() as { id: string }).id, 'the same key answers the same purchase')
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${optionId}` })).json().allocation, 0)

  const ready = await app.inject({ method: 'GET', url: '/health/ready' })
  t.equal(ready.statusCode, 200)
  t.same(ready.json().checks, { postgres: 'ok', redis: 'ok' })
  const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body
  t.equal(sample(metrics, 'purchase_queue_depth_up'), 1, 'queue depths read from the cluster')
  t.equal(sample(metrics, 'direct_requests_total', { result: 'applied' }), 5, 'every new purchase took the direct path (the keyed retry was answered from its key): its scripts run in the option\'s slot')
  t.equal(sample(metrics, 'purchase_queue_options_registered'), 0, 'so no queue was needed')
  t.equal(sample(metrics, 'dependency_up', { dependency: 'redis' }), 1)

  // Outcomes and wake-ups go on sharded channels: subscribed on a shard, never broadcast to every node.
  const shardSubscribers = async (channel: string, command: 'SHARDNUMSUB' | 'NUMSUB'): Promise<number> => {
    let total = 0
    for (const port of await cluster.masters()) {
      const node = cluster.connect(port)
      await node.connect()
      const reply = await node.call('PUBSUB', command, channel) as [string, number]
      total += Number(reply[1])
      node.disconnect()
    }
    return total
  }
  for (const channel of [purchaseOutcomesChannel(config.queuePrefix), queueWakeupChannel(config.queuePrefix)]) {
    t.ok(await shardSubscribers(channel, 'SHARDNUMSUB') >= 1, `${channel}: a sharded subscription`)
    t.equal(await shardSubscribers(channel, 'NUMSUB'), 0, `${channel}: no classic (broadcast) subscription`)
  }

  const line = await app.inject({ method: 'GET', url: `/ticket_options/${optionId}/queue` })
  t.equal(line.statusCode, 200)
  t.equal(line.json().waiting, 0, 'the line: its counters live in the option\'s slot')
})

t.test('a 202 on a cluster settles once a worker comes', async (t) => {
  const environment = await setUp(t, { worker: false, env: { REDIS_CLUSTER_NODES: cluster.seeds, PURCHASE_WAIT_MS: '200', ...QUEUED } })
  const { app } = environment
  const optionId = await createOption(app, 5)
  const pending = await buy(app, optionId, { quantity: 2 })
  t.equal(pending.statusCode, 202)
  const purchaseId = (pending.json() as { id: string }).id
  t.equal(await status(app, optionId, purchaseId), 'pending')
  const held = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/reservations`, payload: { user_id: TEST_USER, quantity: 1, hold_seconds: 60 } })
  t.equal(held.statusCode, 202, 'a hold waits in the same line')
  await startTestWorker(t, environment.config)
  t.equal(await waitFor(async () => await status(app, optionId, purchaseId), (s) => s === 'succeeded', 15_000), 'succeeded', 'the purchase settles')
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${optionId}` })).json().allocation, 2, 'and the hold after it: 5 - 2 - 1')
})

t.test('options\' queues spread over every master', async (t) => {
  const { app, prefix, config } = await setUp(t, { env: { REDIS_CLUSTER_NODES: cluster.seeds, DASHBOARD_USER: 'operator', DASHBOARD_PASSWORD: 'cluster-dashboard-pw', ...QUEUED } })
  const options = await Promise.all(Array.from({ length: 20 }, async (_, i) => await createOption(app, 10, `spread ${i}`)))
  for (const id of options) t.equal((await buy(app, id)).statusCode, 201)
  // The dashboard lists an option's queue from the cluster, with its completed job.
  const auth = { authorization: `Basic ${Buffer.from('operator:cluster-dashboard-pw').toString('base64')}` }
  const listed = await waitFor(async () => {
    const res = await app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: auth })
    return (res.json() as { queues?: Array<{ name: string, counts: Record<string, number> }> }).queues?.find((q) => q.name === purchaseQueueName(options[0] as string))
  }, (q) => q !== undefined, 5000, 200)
  t.equal(listed?.counts.completed, 1, 'the dashboard reads the option\'s queue on the cluster')
  const masters = await cluster.masters()
  t.equal(masters.length, 3)
  const perMaster: Record<number, number> = {}
  for (const port of masters) {
    const keys = await keysOn(port, `${prefix}:purchases-*`)
    perMaster[port] = new Set(keys.map((k) => /\{([0-9a-f-]+)\}/.exec(k)?.[1])).size
  }
  t.comment(`queues (options) per master: ${JSON.stringify(perMaster)}`)
  t.ok(Object.values(perMaster).every((n) => n > 0), 'every master holds some options\' queue keys')
  t.equal(Object.values(perMaster).reduce((a, b) => a + b, 0), 20, 'each option\'s queue keys on one master')
  // The shared key stays small: one sorted set of option ids.
  const registryHolders = (await Promise.all(masters.map(async (p) => await keysOn(p, activeOptionsKey(prefix))))).filter((k) => k.length > 0)
  t.equal(registryHolders.length, 1, 'the registry of active options is one key')
  t.equal(config.queuePrefix, prefix)
})

t.test('2 APIs and 2 workers on a cluster, 600 buyers at once', async (t) => {
  const environment = await createTestEnvironment(t, { REDIS_CLUSTER_NODES: cluster.seeds, PURCHASE_WAIT_MS: '30000', DATABASE_POOL_SIZE: '5' })
  const { env, sql } = environment
  const apis = await Promise.all([startProcess(t, 'api', env), startProcess(t, 'api', env)])
  const workers = await Promise.all([startProcess(t, 'worker', env), startProcess(t, 'worker', env)])
  t.ok(apis[0]?.output.some((line) => line.includes('queues on Redis Cluster')), 'the process says its queues are on a Redis Cluster')
  const urls = apis.map((a) => a.url)
  const created = await Promise.all([150, 250].map(async (allocation) => await callJson(urls[0] as string, 'POST', '/ticket_options', { name: `cluster ${allocation}`, allocation })))
  const [a, b] = created.map((c) => c.body.id as string) as [string, string]
  const purchases: PurchaseSpec[] = Array.from({ length: 600 }, (_, i) => ({ optionId: i % 2 === 0 ? a : b, quantity: 1, userId: randomUUID() }))
  const { answers } = await runPurchases({ urls, total: purchases.length, concurrency: 256, spec: (i) => purchases[i] as PurchaseSpec })
  const of = (id: string): Record<string, number> => countByStatus(answers.filter((_, i) => purchases[i]?.optionId === id))
  t.comment(`option a: ${JSON.stringify(of(a))}, option b: ${JSON.stringify(of(b))}`)
  t.same(of(a), { 201: 150, 409: 150 }, '150 of 300 sold on a')
  t.same(of(b), { 201: 250, 409: 50 }, '250 of 300 sold on b')
  const sold = answers.filter((x) => x.status === 201).map((x) => x.body.id as string)
  const { rows } = await sql.query("select count(*)::int as n from purchases where id = any($1::uuid[]) and status = 'succeeded'", [sold])
  t.equal(rows[0].n, 400, 'every 201 is committed')
  t.same(await unbalancedOptions(sql), [])

  // Graceful shutdown on a cluster: SIGTERM, every process closes its cluster connections and exits 0.
  for (const proc of [...apis, ...workers]) proc.child.kill('SIGTERM')
  t.same(await Promise.all([...apis, ...workers].map(async (p) => await p.exited)), [0, 0, 0, 0], 'APIs and workers exit 0 on SIGTERM')
})

t.test('REDIS_CLUSTER_NODES=… npm start: the launcher serves and sells on the cluster', async (t) => {
  const environment = await createTestEnvironment(t, { REDIS_CLUSTER_NODES: cluster.seeds })
  const port = await freePort()
  const output: string[] = []
  const child = spawn(process.execPath, [...nodeArgs(), 'launcher/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...coverageEnv(), ...environment.env, PORT: String(port), LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  for (const stream of [child.stdout, child.stderr]) stream.on('data', (chunk: Buffer) => { output.push(chunk.toString()) })
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  t.teardown(() => { child.kill('SIGKILL') })
  const url = `http://127.0.0.1:${port}`
  const ready = await waitFor(async () => await callJson(url, 'GET', '/health/ready').catch(() => ({ status: 0, body: {} as Record<string, any> })), (r) => r.status === 200 && output.join('').includes('worker started'), 30_000, 100)
  t.same(ready.body.checks, { postgres: 'ok', redis: 'ok' }, `ready:\n${ready.status === 200 ? '' : output.join('')}`)
  t.equal((output.join('').match(/"msg":"queues on Redis Cluster"/g) ?? []).length >= 2, true, 'the API and the worker say their queues are on the cluster')
  const option = (await callJson(url, 'POST', '/ticket_options', { name: 'launched on a cluster', allocation: 3 })).body.id as string
  const statuses = []
  for (const quantity of [2, 2, 1]) statuses.push((await callJson(url, 'POST', `/ticket_options/${option}/purchases`, { quantity, user_id: TEST_USER })).status)
  t.same(statuses, [201, 409, 201], '2 bought, 2 more refused, the last 1 bought')
  t.equal((await callJson(url, 'GET', `/ticket_options/${option}`)).body.allocation, 0)
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'a clean stop')
})

/** The master that serves an option's queue now (the slot of its hash tag). */
async function masterOfOption (ticketOptionId: string): Promise<number> {
  const [port] = await cluster.masters()
  const node = cluster.connect(port as number)
  await node.connect()
  const slot = Number(await node.call('CLUSTER', 'KEYSLOT', `{${ticketOptionId}}`))
  const ranges = await node.call('CLUSTER', 'SLOTS') as Array<[number, number, [string, number, ...unknown[]], ...unknown[]]>
  node.disconnect()
  const range = ranges.find(([from, to]) => slot >= from && slot <= to)
  if (range === undefined) throw new Error(`no node serves slot ${slot}`)
  return Number(range[2][1])
}

t.test('a master killed mid-burst: nothing lost or doubled, every buyer answered, selling resumes', async (t) => {
  const environment = await createTestEnvironment(t, { REDIS_CLUSTER_NODES: cluster.seeds, PURCHASE_WAIT_MS: '5000', DATABASE_POOL_SIZE: '5' })
  const { env, sql } = environment
  const api = await startProcess(t, 'api', env)
  await Promise.all([startProcess(t, 'worker', env), startProcess(t, 'worker', env)])
  const initial = 100_000
  const optionId = await createOptionOver(api.url, initial)
  const victim = await masterOfOption(optionId)
  t.comment(`the option's queue is on the master at port ${victim}; masters ${JSON.stringify(await cluster.masters())}`)

  let killedAt = 0
  let okAfterMs = -1
  const answers = await fireBurst(api.url, optionId, {
    count: 2400,
    concurrency: 16,
    pauseMs: 20,
    strike: {
      after: 400,
      fault: async (answer) => {
        killedAt = answer.at
        const killed = Date.now()
        await cluster.kill(victim)
        // Other nodes still say ok until they mark it failed (node timeout 1 s) and promote its replica.
        while (!(await cluster.masters().catch(() => [victim])).every((port) => port !== victim)) {
          if (Date.now() - killed > 30_000) throw new Error('no replica took over in 30 s')
          await sleep(50)
        }
        await cluster.waitUntilOk(30_000)
        okAfterMs = Date.now() - killed
      },
    },
  })
  t.ok(okAfterMs >= 0, `cluster_state:ok again ${okAfterMs} ms after the kill`)
  t.notOk((await cluster.masters()).includes(victim), 'a replica took over the killed master\'s slots')
  t.equal(answers.length, 2400, 'every request was answered')
  const burst = [...answers]
  t.same(answers.filter((a) => ![201, 202, 409, 503].includes(a.status)).map((a) => [a.status, a.body]), [], 'only 201, 202, 409 or 503')

  // The stall: the longest time without a 201 (requests sent before the kill may still be answered after it).
  const sold = burst.filter((a) => a.status === 201).map((a) => a.at).sort((x, y) => x - y)
  let longest = 0
  for (let i = 1; i < sold.length; i++) longest = Math.max(longest, (sold[i] as number) - (sold[i - 1] as number))
  t.ok(sold.some((at) => at > killedAt + okAfterMs), 'purchases succeed again within the burst once the cluster is ok')
  t.comment(`stall: ${JSON.stringify({ longestGapBetween201sMs: Math.round(longest), clusterOkAfterKillMs: okAfterMs })}`)
  t.comment(`answers: ${JSON.stringify(countByStatus(burst))}`)

  // Selling resumes by itself: a fresh purchase succeeds within 10 s of cluster_state:ok.
  const resumed = Date.now()
  let after: number | undefined
  while (Date.now() - resumed < 10_000) {
    const [answer] = await fireBurst(api.url, optionId, { count: 1, concurrency: 1 })
    if (answer !== undefined) answers.push(answer)
    if (answer?.status === 201) { after = Date.now() - resumed; break }
    await sleep(100)
  }
  t.ok(after !== undefined, `a purchase after cluster_state:ok succeeds within 10 s (${after ?? '-'} ms)`)

  await settlePending(api.url, optionId, answers, 30_000)
  t.same(answers.filter((a) => a.settled === 'pending').map((a) => a.purchaseId), [], 'no 202 stays pending')
  t.comment(`202s: ${JSON.stringify(countByStatus(answers.filter((a) => a.status === 202)))}`)
  const books = await checkBooks(t, sql, api.url, optionId, initial, answers, { everyRowAnswered: true })
  t.equal(books.succeeded, answers.filter((a) => a.status === 201 || a.settled === 'succeeded').length, 'committed = the 201s + the 202s settled succeeded')
})
