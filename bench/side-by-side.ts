/**
 * `npm run bench:side-by-side`: what one purchase of a single buyer costs,
 * process by process, with the machine's noise shared. One sequential buyer
 * per target, each on an option of its own, buying in blocks of SIDE_BLOCK
 * taken in turn (the order alternating); the CPU of each process, of the
 * PostgreSQL backends of its database and of redis-server is counted over its
 * own blocks only, with user and system time apart.
 *
 * Targets: our API (this checkout, compiled as `npm run bench` does) and the
 * reference server; with `--against <git revision>`, also an API built from
 * that revision (a git worktree, compiled the same way, on our database under
 * a Redis prefix of its own, so the two share no lease or channel): what a
 * change bought, as a ratio of API CPU. The same build on both sides reads
 * 1.00–1.03.
 *
 *   npm run bench:side-by-side
 *   npm run bench:side-by-side -- --against HEAD~1
 *   npm run bench:side-by-side -- --profile   (--cpu-prof on every server, as BENCH_PROFILE=1)
 *   SIDE_PURCHASES=8000 SIDE_BLOCK=50 (per target, after SIDE_WARMUP=3000 each)
 *
 * Needs PostgreSQL and Redis as `npm run bench` does (BENCH_DATABASE_URL,
 * BENCH_REDIS_URL); a revision's schema must be one this checkout's
 * migrations still serve.
 */
import { execFileSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Pool } from 'undici'
import { round } from './latency'
import { buildForBench, cpuMs, cpuTimes, redisPids, ROOT, Stack } from './stack'
import { callJson } from '../test/support/load'

const env = process.env
const PURCHASES = Number(env.SIDE_PURCHASES ?? '8000')
const BLOCK = Number(env.SIDE_BLOCK ?? '50')
const WARMUP = Number(env.SIDE_WARMUP ?? '3000')

interface Target {
  name: string
  url: string
  /** the server process */
  pid: number
  database: string
  sql: Stack['oursSql']
}

interface Tally {
  target: Target
  optionId: string
  pool: Pool
  purchases: number
  latencies: number[]
  /** its CPU in ms: `total` to the nanosecond (cpuMs), `user` and `system` in 10 ms ticks (cpuTimes), for the split only */
  server: { total: number, user: number, system: number }
  postgres: number
  redis: number
}

/** Compiles `revision` in a git worktree of its own; returns its api/server.js and how to remove it. */
function buildRevision (revision: string): { script: string, remove: () => void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'side-by-side-'))
  const remove = (): void => {
    try {
      execFileSync('git', ['worktree', 'remove', '--force', dir], { cwd: ROOT, stdio: 'ignore' })
    } catch {}
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    execFileSync('git', ['worktree', 'add', '--detach', dir, revision], { cwd: ROOT, stdio: 'ignore' })
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(dir, 'node_modules'))
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    // Revisions before the bench compiled itself have only the product's build.
    const benchBuild = path.join(dir, 'bench', 'tsconfig.build.json')
    if (existsSync(benchBuild)) {
      execFileSync(process.execPath, [tsc, '-p', benchBuild], { cwd: dir, stdio: 'inherit' })
      return { script: path.join(dir, 'bench', 'results', 'build', 'api', 'server.js'), remove }
    }
    execFileSync(process.execPath, [tsc, '-p', path.join(dir, 'tsconfig.build.json')], { cwd: dir, stdio: 'inherit' })
    return { script: path.join(dir, 'dist', 'api', 'server.js'), remove }
  } catch (err) {
    remove()
    throw err
  }
}

async function backendPids (target: Target): Promise<number[]> {
  const { rows } = await target.sql.query<{ pid: number }>('select pid from pg_stat_activity where datname = $1', [target.database])
  return rows.map((r) => r.pid)
}

async function buy (tally: Tally): Promise<number> {
  const started = performance.now()
  const res = await tally.pool.request({
    method: 'POST',
    path: `/ticket_options/${tally.optionId}/purchases`,
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ quantity: 1, user_id: randomUUID() }),
  })
  const body = await res.body.text()
  if (res.statusCode !== 201) throw new Error(`${tally.target.name}: a purchase answered ${res.statusCode}: ${body}`)
  return performance.now() - started
}

/** One block of purchases, with the CPU its target used meanwhile added to its tally. */
async function block (tally: Tally): Promise<void> {
  const backends = await backendPids(tally.target)
  const total = (pids: number[]): number => pids.reduce((sum, pid) => sum + cpuMs(pid), 0)
  const server = cpuTimes(tally.target.pid)
  const serverMs = cpuMs(tally.target.pid)
  const postgres = total(backends)
  const redis = total(redisPids())
  for (let i = 0; i < BLOCK; i++) tally.latencies.push(await buy(tally))
  const serverAfter = cpuTimes(tally.target.pid)
  tally.server.total += cpuMs(tally.target.pid) - serverMs
  tally.server.user += serverAfter.user - server.user
  tally.server.system += serverAfter.system - server.system
  // Backends that ended meanwhile count nothing; the pools keep theirs open.
  tally.postgres += total(backends) - postgres
  tally.redis += total(redisPids()) - redis
  tally.purchases += BLOCK
}

function report (tally: Tally): string {
  const n = tally.purchases
  const sorted = [...tally.latencies].sort((a, b) => a - b)
  const p50 = sorted[Math.floor(sorted.length / 2)] ?? 0
  const per = (ms: number): number => round(ms / n, 3)
  const { total: serverMs, user, system } = tally.server
  // The split in ticks, scaled to the total measured in nanoseconds.
  const share = user + system === 0 ? 0 : serverMs / (user + system)
  return `${tally.target.name.padEnd(10)} ${n} purchases, p50 ${round(p50, 2)} ms; CPU ms a purchase: server ${per(serverMs)} (user ${per(user * share)}, system ${per(system * share)}), ` +
    `PostgreSQL ${per(tally.postgres)}, Redis ${per(tally.redis)}, total ${per(serverMs + tally.postgres + tally.redis)}`
}

async function main (): Promise<void> {
  const againstIndex = process.argv.indexOf('--against')
  const revision = againstIndex >= 0 ? process.argv[againstIndex + 1] : undefined
  if (againstIndex >= 0 && (revision === undefined || revision === '')) throw new Error('--against needs a git revision')
  buildForBench()
  const against = revision === undefined ? undefined : buildRevision(revision)
  const stack = new Stack({
    adminDatabaseUrl: env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    redisUrl: env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379',
    queueBackend: 'redis',
    apis: 1,
    workers: 1,
    profile: process.argv.includes('--profile'),
    env: {},
    tsx: false,
  })
  const onSignal = (): void => { stack.killAllNow(); against?.remove(); process.exit(130) }
  process.once('SIGINT', onSignal)
  try {
    await stack.start()
    const [api] = stack.apis
    if (api === undefined || stack.reference === undefined) throw new Error('the stack did not start')
    const targets: Target[] = [{ name: 'ours', url: api.url, pid: api.child.pid ?? 0, database: stack.oursDb, sql: stack.oursSql }]
    if (against !== undefined) {
      const other = await stack.startApiFrom('against', against.script)
      targets.push({ name: `${revision as string}`.slice(0, 10), url: other.url, pid: other.child.pid ?? 0, database: stack.oursDb, sql: stack.oursSql })
    }
    targets.push({ name: 'reference', url: stack.reference.url, pid: stack.reference.child.pid ?? 0, database: stack.refDb, sql: stack.refSql })

    const tallies: Tally[] = []
    for (const target of targets) {
      const res = await callJson(target.url, 'POST', '/ticket_options', { name: `side by side ${target.name}`, desc: 'bench', allocation: PURCHASES + WARMUP })
      if (res.status !== 201) throw new Error(`${target.name}: could not create an option: ${res.status}`)
      tallies.push({ target, optionId: res.body.id as string, pool: new Pool(target.url, { connections: 1, pipelining: 1 }), purchases: 0, latencies: [], server: { total: 0, user: 0, system: 0 }, postgres: 0, redis: 0 })
    }
    try {
      process.stdout.write(`warming up: ${WARMUP} purchases each\n`)
      for (const tally of tallies) for (let i = 0; i < WARMUP; i++) await buy(tally)
      process.stdout.write(`measuring: ${PURCHASES} purchases each, in blocks of ${BLOCK} taken in turn\n`)
      for (let done = 0; done < PURCHASES; done += BLOCK) {
        for (const tally of (done / BLOCK) % 2 === 0 ? tallies : [...tallies].reverse()) await block(tally)
      }
    } finally {
      await Promise.all(tallies.map(async (t) => { await t.pool.close() }))
    }
    for (const tally of tallies) process.stdout.write(`${report(tally)}\n`)
    const serverOf = (t: Tally): number => t.server.total / t.purchases
    const totalOf = (t: Tally): number => (t.server.total + t.postgres + t.redis) / t.purchases
    const [ours, ...rest] = tallies as [Tally, ...Tally[]]
    const reference = rest[rest.length - 1] as Tally
    if (rest.length === 2) process.stdout.write(`API CPU ours / ${revision as string}: ${round(serverOf(ours) / serverOf(rest[0] as Tally), 3)}\n`)
    process.stdout.write(`total CPU ours / reference: ${round(totalOf(ours) / totalOf(reference), 3)}; server CPU ours / reference: ${round(serverOf(ours) / serverOf(reference), 3)}\n`)
  } finally {
    await stack.close()
    against?.remove()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`side by side failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exitCode = 1
})
