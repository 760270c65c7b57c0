/**
 * The scenarios of `npm run bench` and the correctness checks run after each.
 * A scenario creates fresh options through the target's own HTTP API, sends
 * its purchases, settles any 202 through the status route, then checks the
 * answers against the target's database.
 */
import type { Redis } from 'ioredis'
import type pg from 'pg'
import { cpuMs, redisPids } from './stack'
import { callJson as call, runPurchases, type LoadResult } from '../test/support/load'
import { sleep } from '../test/support/wait'
import { summarize, round, type LatencySummary } from './latency'

export interface Target {
  name: 'ours' | 'reference'
  urls: string[]
  sql: pg.Pool
  /** pids of the target's server processes by role (api, worker; or reference) */
  pids: () => Record<string, number[]>
  /** the target's database name, to find its PostgreSQL backends */
  database: string
  /** a connection to the Redis server, for INFO commandstats (server-wide: the bench must run alone) */
  redis?: Redis
}

/**
 * Store operations per purchase during the load: what a capacity plan
 * multiplies (docs/capacity.md). Redis from INFO commandstats (calls, by
 * command), PostgreSQL from pg_stat_database of the target's database.
 */
export interface OpsPerPurchase {
  redisCommands: number
  /** the most frequent commands, calls per purchase */
  redisByCommand: Record<string, number>
  pgTransactions: number
  /** rows inserted, updated and deleted */
  pgRowsWritten: number
  /** rows returned by scans and fetched by index */
  pgRowsRead: number
}

interface OpsSnapshot {
  redis: Map<string, number>
  pg: { transactions: number, written: number, read: number }
}

async function opsSnapshot (target: Target): Promise<OpsSnapshot> {
  const redis = new Map<string, number>()
  if (target.redis !== undefined) {
    const text = await target.redis.info('commandstats')
    for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) redis.set(m[1] as string, Number(m[2]))
  }
  const { rows } = await target.sql.query<{ transactions: string, written: string, read: string }>(
    `select xact_commit + xact_rollback as transactions, tup_inserted + tup_updated + tup_deleted as written, tup_returned + tup_fetched as read
       from pg_stat_database where datname = $1`, [target.database])
  const row = rows[0]
  return { redis, pg: { transactions: Number(row?.transactions ?? 0), written: Number(row?.written ?? 0), read: Number(row?.read ?? 0) } }
}

/**
 * PostgreSQL 15 backends report their statistics at most once a second, and
 * an idle one only after up to 10 s: pg_stat_database lags that long. Runs
 * that count PostgreSQL operations (`countPgOps`) wait it out; the others
 * report them as -1 (Redis' INFO commandstats is exact at once).
 */
export const PG_STATS_FLUSH_MS = 11_000

function opsPerPurchase (before: OpsSnapshot, after: OpsSnapshot, n: number, countPg: boolean): OpsPerPurchase {
  const calls = [...after.redis].map(([name, count]) => [name, count - (before.redis.get(name) ?? 0)] as const).filter(([, c]) => c > 0)
  calls.sort((a, b) => b[1] - a[1])
  const total = calls.reduce((sum, [, c]) => sum + c, 0)
  return {
    redisCommands: round(total / n, 2),
    redisByCommand: Object.fromEntries(calls.slice(0, 8).map(([name, c]) => [name, round(c / n, 2)])),
    pgTransactions: countPg ? round((after.pg.transactions - before.pg.transactions) / n, 2) : -1,
    pgRowsWritten: countPg ? round((after.pg.written - before.pg.written) / n, 2) : -1,
    pgRowsRead: countPg ? round((after.pg.read - before.pg.read) / n, 1) : -1,
  }
}

/** CPU ms used per purchase during the load, by component (Redis is shared with other users of this machine). */
export interface CpuPerPurchase {
  /** all server processes; `byRole` splits it */
  servers: number
  byRole: Record<string, number>
  /** the backends of the target's database that serve its connections */
  postgres: number
  /** autovacuum and autoanalyze of the target's database during the run, apart: the table grows with every run, so when they fall decides who pays */
  postgresAutovacuum: number
  redis: number
  loadGenerator: number
}

type CpuSnapshot = Record<Exclude<keyof CpuPerPurchase, 'byRole'>, number> & { byRole: Record<string, number>, backends: Map<number, number>, autovacuum: Set<number> }

async function cpuSnapshot (target: Target): Promise<CpuSnapshot> {
  const { rows } = await target.sql.query<{ pid: number, backend_type: string }>('select pid, backend_type from pg_stat_activity where datname = $1', [target.database])
  const sum = (pids: number[]): number => pids.reduce((a, p) => a + cpuMs(p), 0)
  const own = process.cpuUsage()
  const byRole = Object.fromEntries(Object.entries(target.pids()).map(([role, pids]) => [role, sum(pids)]))
  return {
    servers: Object.values(byRole).reduce((a, b) => a + b, 0),
    byRole,
    postgres: 0,
    postgresAutovacuum: 0,
    // Per backend: pools close idle connections and open new ones during a run.
    backends: new Map(rows.map((r) => [r.pid, cpuMs(r.pid)])),
    autovacuum: new Set(rows.filter((r) => r.backend_type === 'autovacuum worker').map((r) => r.pid)),
    redis: sum(redisPids()),
    loadGenerator: (own.user + own.system) / 1000,
  }
}

export interface Scenario {
  name: string
  description: string
  concurrency: number
  /** number of purchases; for a timed scenario, the upper bound */
  total: number
  /** stop sending after this long (soak) */
  durationMs?: number
  options: number
  allocation: number
  /** the allocation of option `o` when options differ (default: `allocation` for every one) */
  allocationOf?: (o: number) => number
  /** which option request `i` buys from (default: round-robin) */
  optionOf?: (i: number) => number
  quantity: (i: number) => number
  /** every option is sold out at the end (demand exceeds allocation) */
  expectSoldOut: boolean
}

export const SCENARIOS: Record<string, Scenario> = {
  hot64: { name: 'hot64', description: 'one option, allocation 2000, 6000 × quantity 1, concurrency 64', concurrency: 64, total: 6000, options: 1, allocation: 2000, quantity: () => 1, expectSoldOut: true },
  hot256: { name: 'hot256', description: 'one option, allocation 2000, 6000 × quantity 1, concurrency 256', concurrency: 256, total: 6000, options: 1, allocation: 2000, quantity: () => 1, expectSoldOut: true },
  spread: { name: 'spread', description: '50 options × allocation 40, 6000 × quantity 1 round-robin, concurrency 256', concurrency: 256, total: 6000, options: 50, allocation: 40, quantity: () => 1, expectSoldOut: true },
  mixed: { name: 'mixed', description: 'one option, allocation 2000, 6000 × quantity 1–4 (cycling), concurrency 256', concurrency: 256, total: 6000, options: 1, allocation: 2000, quantity: (i) => (i % 4) + 1, expectSoldOut: true },
  // What a real on-sale looks like: one headline option and a tail of quiet ones.
  realistic: {
    name: 'realistic',
    description: '1 hot option (allocation 2000) + 49 quiet (allocation 10), 6000 × quantity 1, 80 % on the hot one, concurrency 256',
    concurrency: 256,
    total: 6000,
    options: 50,
    allocation: 2000,
    allocationOf: (o) => o === 0 ? 2000 : 10,
    // 4 of every 5 requests on option 0; the fifth goes round the 49 others (about 24 each, so they sell out too).
    optionOf: (i) => i % 5 === 4 ? 1 + (Math.floor(i / 5) % 49) : 0,
    quantity: () => 1,
    expectSoldOut: true,
  },
  latency: { name: 'latency', description: 'one option, allocation 4000, 2000 × quantity 1, sequential (concurrency 1)', concurrency: 1, total: 2000, options: 1, allocation: 4000, quantity: () => 1, expectSoldOut: false },
}

export function soakScenario (seconds: number): Scenario {
  return { name: 'soak', description: `one option, allocation 2147483647, ${seconds} s at concurrency 256`, concurrency: 256, total: 10_000_000, durationMs: seconds * 1000, options: 1, allocation: 2147483647, quantity: () => 1, expectSoldOut: false }
}

export interface RunFigures {
  target: string
  scenario: string
  purchasesPerSecond: number
  elapsedMs: number
  latencyMs: LatencySummary
  byStatus: Record<string, number>
  /** 202s settled through the status route */
  settled: { succeeded: number, rejected: number, unsettled: number }
  ticketsSold: number
  checks: Record<string, boolean>
  failures: string[]
  cpuMsPerPurchase: CpuPerPurchase
  opsPerPurchase: OpsPerPurchase
}

async function createOptions (target: Target, scenario: Scenario): Promise<string[]> {
  const ids: string[] = []
  for (let i = 0; i < scenario.options; i++) {
    const allocation = scenario.allocationOf?.(i) ?? scenario.allocation
    const res = await call(target.urls[0] as string, 'POST', '/ticket_options', { name: `bench ${scenario.name} ${i}`, desc: 'bench', allocation })
    if (res.status !== 201) throw new Error(`${target.name}: could not create an option: ${res.status} ${JSON.stringify(res.body)}`)
    ids.push(res.body.id as string)
  }
  return ids
}

/** Settles a 202 through GET …/purchases/:id; returns its final status or 'pending' after the limit. */
async function settle (url: string, optionId: string, purchaseId: string, limitMs = 60_000): Promise<string> {
  const deadline = Date.now() + limitMs
  while (Date.now() < deadline) {
    const res = await call(url, 'GET', `/ticket_options/${optionId}/purchases/${purchaseId}`)
    if (res.status === 200 && res.body.status !== 'pending') return res.body.status as string
    await sleep(200)
  }
  return 'pending'
}

export async function runScenario (target: Target, scenario: Scenario, onTick?: (elapsedMs: number) => void, countPgOps = false): Promise<RunFigures> {
  const optionIds = await createOptions(target, scenario)
  const optionOf = scenario.optionOf ?? ((i: number) => i % optionIds.length)
  const spec = (i: number): { optionId: string, quantity: number } => ({ optionId: optionIds[optionOf(i)] as string, quantity: scenario.quantity(i) })
  let ticker: NodeJS.Timeout | undefined
  if (onTick !== undefined) {
    const started = Date.now()
    ticker = setInterval(() => { onTick(Date.now() - started) }, 1000)
  }
  let load: LoadResult
  // Statistics of what came before (the last run's settling, these options) must be in before we count.
  if (countPgOps) await sleep(PG_STATS_FLUSH_MS)
  const opsBefore = await opsSnapshot(target)
  const before = await cpuSnapshot(target)
  try {
    load = await runPurchases({ urls: target.urls, total: scenario.total, concurrency: scenario.concurrency, spec, durationMs: scenario.durationMs, timeoutMs: 300_000 })
  } finally {
    clearInterval(ticker)
  }
  const after = await cpuSnapshot(target)
  if (countPgOps) await sleep(PG_STATS_FLUSH_MS)
  const opsAfter = await opsSnapshot(target)
  const n = Math.max(1, load.answers.length)
  // A backend that ended during the run is missed; one that started counts whole.
  const used = (pid: number, ms: number): number => ms - (before.backends.get(pid) ?? 0)
  const maintenance = (pid: number): boolean => after.autovacuum.has(pid) || before.autovacuum.has(pid)
  after.postgres = [...after.backends].reduce((a, [pid, ms]) => maintenance(pid) ? a : a + used(pid, ms), 0)
  after.postgresAutovacuum = [...after.backends].reduce((a, [pid, ms]) => maintenance(pid) ? a + used(pid, ms) : a, 0)
  const per = (k: Exclude<keyof CpuPerPurchase, 'byRole'>): number => round((after[k] - before[k]) / n, 3)
  const figures = await check(target, scenario, optionIds, load)
  figures.cpuMsPerPurchase = {
    servers: per('servers'),
    byRole: Object.fromEntries(Object.keys(after.byRole).map((role) => [role, round(((after.byRole[role] ?? 0) - (before.byRole[role] ?? 0)) / n, 3)])),
    postgres: per('postgres'),
    postgresAutovacuum: per('postgresAutovacuum'),
    redis: per('redis'),
    loadGenerator: per('loadGenerator'),
  }
  figures.opsPerPurchase = opsPerPurchase(opsBefore, opsAfter, n, countPgOps)
  return figures
}

async function check (target: Target, scenario: Scenario, optionIds: string[], load: LoadResult): Promise<RunFigures> {
  const failures: string[] = []
  const soldPerOption = new Map<string, number>(optionIds.map((id) => [id, 0]))
  const succeededPerOption = new Map<string, number>(optionIds.map((id) => [id, 0]))
  const settled = { succeeded: 0, rejected: 0, unsettled: 0 }
  let badBodies = 0
  const pendings: Array<{ optionId: string, purchaseId: string, quantity: number }> = []
  for (const a of load.answers) {
    if (a === undefined) continue
    const { optionId, quantity } = a.spec
    if (a.status === 201) {
      if (a.body?.status !== 'succeeded' || a.body?.quantity !== quantity || a.body?.ticket_option_id !== optionId) badBodies++
      soldPerOption.set(optionId, (soldPerOption.get(optionId) ?? 0) + quantity)
      succeededPerOption.set(optionId, (succeededPerOption.get(optionId) ?? 0) + 1)
    } else if (a.status === 409) {
      if (a.body?.requested !== quantity || typeof a.body?.available !== 'number' || a.body.available >= quantity) badBodies++
    } else if (a.status === 202) {
      pendings.push({ optionId, purchaseId: a.body?.id as string, quantity })
    }
  }
  // A 202 is not a success: settle it through the status route and count it apart.
  for (const p of pendings) {
    const status = await settle(target.urls[0] as string, p.optionId, p.purchaseId)
    if (status === 'succeeded') {
      settled.succeeded++
      soldPerOption.set(p.optionId, (soldPerOption.get(p.optionId) ?? 0) + p.quantity)
      succeededPerOption.set(p.optionId, (succeededPerOption.get(p.optionId) ?? 0) + 1)
    } else if (status === 'rejected') settled.rejected++
    else settled.unsettled++
  }

  const answered = load.answers.filter((a) => a !== undefined).length
  const unexpected = Object.entries(load.byStatus).filter(([s]) => !['201', '202', '409'].includes(s))
  const { rows: options } = await target.sql.query<{ id: string, initial_allocation: number, allocation: number, succeeded: string }>(
    `select o.id, o.initial_allocation, o.allocation,
            (select count(*) from purchases p where p.ticket_option_id = o.id and p.status = 'succeeded') as succeeded
       from ticket_options o where o.id = any($1::uuid[])`, [optionIds])
  const { rows: unbalanced } = await target.sql.query('select id from allocation_audit where not balanced')

  let soldMatches = true
  let finalOk = true
  let committedMatches = true
  for (const o of options) {
    const sold = soldPerOption.get(o.id) ?? 0
    if (o.initial_allocation - o.allocation !== sold) soldMatches = false
    if (scenario.expectSoldOut && (o.allocation !== 0 || sold !== o.initial_allocation)) finalOk = false
    if (Number(o.succeeded) !== (succeededPerOption.get(o.id) ?? 0)) committedMatches = false
  }
  const checks: Record<string, boolean> = {
    every_request_answered: answered === load.answers.length && load.errors === 0,
    only_201_202_409: unexpected.length === 0,
    bodies_match_requests: badBodies === 0,
    all_202_settled: settled.unsettled === 0,
    // hot/spread: successes = allocation; mixed: Σ succeeded quantities = allocation
    sold_equals_allocation_taken: soldMatches,
    [scenario.expectSoldOut ? 'final_allocation_0' : 'final_allocation_as_expected']: finalOk,
    committed_equals_answered_201: committedMatches,
    audit_balanced: unbalanced.length === 0,
  }
  for (const [name, ok] of Object.entries(checks)) if (!ok) failures.push(name)
  if (unexpected.length > 0) failures.push(`statuses: ${JSON.stringify(Object.fromEntries(unexpected))}`)

  const ticketsSold = [...soldPerOption.values()].reduce((a, b) => a + b, 0)
  return {
    target: target.name,
    scenario: scenario.name,
    purchasesPerSecond: round(answered / (load.elapsedMs / 1000), 1),
    elapsedMs: round(load.elapsedMs, 0),
    latencyMs: summarize(load.latencies.subarray(0, answered)),
    byStatus: load.byStatus,
    settled,
    ticketsSold,
    checks,
    failures,
    cpuMsPerPurchase: { servers: 0, byRole: {}, postgres: 0, postgresAutovacuum: 0, redis: 0, loadGenerator: 0 },
    opsPerPurchase: { redisCommands: 0, redisByCommand: {}, pgTransactions: 0, pgRowsWritten: 0, pgRowsRead: 0 },
  }
}
