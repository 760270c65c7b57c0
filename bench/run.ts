/**
 * `npm run bench`: starts our stack (1 API, 1 worker; BENCH_APIS / BENCH_WORKERS)
 * and the reference server (bench/reference/) natively, on their own fresh
 * databases and Redis prefix, runs every scenario against both, alternating,
 * BENCH_REPS times (default 3), checks correctness after each run, and prints
 * a table of medians plus one JSON line per scenario. Then: hot256 with the
 * worker's batching off (WORKER_BATCH_SIZE=1), hot256 and latency with
 * tracing on (OTLP to a local sink, bench/trace-sink.ts) against the same runs
 * with tracing off, and a 60 s soak watching RSS.
 *
 * Switches (environment):
 *   BENCH_QUICK=1            one repetition, soak skipped (~1–2 min)
 *   BENCH_REPS=n             repetitions (default 3, quick 1)
 *   BENCH_SCENARIOS=a,b      subset of hot64,hot256,spread,mixed,realistic,latency,batch_off,tracing,sweep,ops,memory,soak
 *   BENCH_SOAK_SECONDS=n     soak length (default 60)
 *   BENCH_APIS / BENCH_WORKERS   process counts (default 1 each)
 *   BENCH_PROFILE=1          --cpu-prof on every server process, written to
 *                            bench/results/profiles/, summarized at the end
 *   BENCH_DATABASE_URL       admin connection (default postgres://postgres@127.0.0.1:5432/postgres)
 *   BENCH_REDIS_URL          default redis://127.0.0.1:6379
 *   BENCH_BACKEND=postgres   our queues on BullMQ's PostgreSQL backend instead of Redis
 *   BENCH_WORKER_ENV / BENCH_API_ENV  extra env, e.g. "WORKER_BATCH_SIZE=200,DATABASE_POOL_SIZE=5"
 *   BENCH_TSX=1              run both sides' TypeScript through tsx (as `npm start`) instead
 *                            of compiling them first with tsc (as the image does)
 * Results are also appended to bench/results/bench-<time>.jsonl.
 */
import { appendFileSync, mkdirSync, readdirSync, statSync } from 'node:fs'
import { cpus } from 'node:os'
import path from 'node:path'
import { round } from './latency'
import { summarizeProfiles } from './profile-summary'
import { PG_STATS_FLUSH_MS, SCENARIOS, runScenario, soakScenario, type RunFigures, type Scenario, type Target } from './scenarios'
import { buildForBench, PROFILE_DIR, ROOT, rssMiB, Stack } from './stack'
import { startTraceSink } from './trace-sink'
import { callJson as call, runPurchases } from '../test/support/load'
import { sleep } from '../test/support/wait'

const env = process.env
const quick = env.BENCH_QUICK === '1' || process.argv.includes('--quick')
const profile = env.BENCH_PROFILE === '1' || process.argv.includes('--profile')
const reps = Number(env.BENCH_REPS ?? (quick || profile ? '1' : '3'))
const soakSeconds = Number(env.BENCH_SOAK_SECONDS ?? '60')
const defaultScenarios = profile ? ['hot256'] : ['hot64', 'hot256', 'spread', 'mixed', 'realistic', 'latency', 'batch_off', 'tracing', 'sweep', 'ops', 'memory', ...(quick ? [] : ['soak'])]
/** Measured with tracing off and on (the `tracing` scenario). */
const TRACING_SCENARIOS = ['hot256', 'latency']
/** Scenarios whose store operations per purchase the `ops` scenario counts. */
const OPS_SCENARIOS = ['hot256', 'spread', 'latency']
/** Jobs of the `memory` scenario. */
const MEMORY_JOBS = 5000
/** [APIs, workers] of the replica sweep on `spread` (the `sweep` scenario). */
const SWEEP: Array<[number, number]> = [[1, 1], [1, 2], [1, 4], [2, 1], [2, 2], [2, 4]]
const selected = (env.BENCH_SCENARIOS ?? defaultScenarios.join(',')).split(',').map((s) => s.trim()).filter((s) => s !== '')
const RESULTS_DIR = path.join(ROOT, 'bench', 'results')
const resultsFile = path.join(RESULTS_DIR, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.jsonl`)

function parseEnvList (value: string | undefined): Record<string, string> {
  const out: Record<string, string> = {}
  for (const pair of (value ?? '').split(',')) {
    const [k, ...v] = pair.split('=')
    if (k !== undefined && k.trim() !== '') out[k.trim()] = v.join('=')
  }
  return out
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length === 0 ? 0 : s.length % 2 === 1 ? s[mid] as number : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

interface Aggregate {
  purchasesPerSecond: number
  p50: number
  p95: number
  p99: number
  max: number
  byStatus: Record<string, number>
  settled: { succeeded: number, rejected: number, unsettled: number }
  checksPassed: boolean
  runs: RunFigures[]
}

function aggregate (runs: RunFigures[]): Aggregate {
  const byStatus: Record<string, number> = {}
  const settled = { succeeded: 0, rejected: 0, unsettled: 0 }
  for (const r of runs) {
    for (const [k, v] of Object.entries(r.byStatus)) byStatus[k] = (byStatus[k] ?? 0) + v
    settled.succeeded += r.settled.succeeded
    settled.rejected += r.settled.rejected
    settled.unsettled += r.settled.unsettled
  }
  return {
    purchasesPerSecond: round(median(runs.map((r) => r.purchasesPerSecond)), 1),
    p50: round(median(runs.map((r) => r.latencyMs.p50))),
    p95: round(median(runs.map((r) => r.latencyMs.p95))),
    p99: round(median(runs.map((r) => r.latencyMs.p99))),
    max: round(median(runs.map((r) => r.latencyMs.max))),
    byStatus,
    settled,
    checksPassed: runs.every((r) => r.failures.length === 0),
    runs,
  }
}

function log (line: string): void { process.stderr.write(`${line}\n`) }

function emit (record: Record<string, unknown>): void {
  const line = JSON.stringify(record)
  process.stdout.write(`${line}\n`)
  appendFileSync(resultsFile, `${line}\n`)
}

function describeRun (r: RunFigures): string {
  const statuses = Object.entries(r.byStatus).map(([k, v]) => `${k}:${v}`).join(' ')
  const checks = r.failures.length === 0 ? 'checks ok' : `CHECKS FAILED: ${r.failures.join(', ')}`
  const cpu = r.cpuMsPerPurchase
  return `  ${r.target.padEnd(9)} ${r.scenario.padEnd(8)} ${String(r.purchasesPerSecond).padStart(8)}/s  p50 ${r.latencyMs.p50} p99 ${r.latencyMs.p99} max ${r.latencyMs.max} ms  [${statuses}]  ` +
    `cpu ms/purchase: ${Object.entries(cpu.byRole).map(([k, v]) => `${k} ${v}`).join(' ')} pg ${cpu.postgres} (autovacuum ${cpu.postgresAutovacuum}) redis ${cpu.redis} loadgen ${cpu.loadGenerator}  ` +
    `ops/purchase: redis ${r.opsPerPurchase.redisCommands} pg tx ${r.opsPerPurchase.pgTransactions} rows written ${r.opsPerPurchase.pgRowsWritten}  ${checks}`
}

async function main (): Promise<void> {
  mkdirSync(RESULTS_DIR, { recursive: true })
  const began = Date.now()
  const stack = new Stack({
    adminDatabaseUrl: env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    redisUrl: env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379',
    queueBackend: env.BENCH_BACKEND === 'postgres' ? 'postgres' : 'redis',
    apis: Number(env.BENCH_APIS ?? '1'),
    workers: Number(env.BENCH_WORKERS ?? '1'),
    profile,
    env: parseEnvList(env.BENCH_API_ENV),
    tsx: env.BENCH_TSX === '1',
  })
  const workerEnv = parseEnvList(env.BENCH_WORKER_ENV)
  let interrupted = false
  const onSignal = (): void => {
    if (interrupted) process.exit(130)
    interrupted = true
    log('interrupted: stopping every process and removing the bench databases…')
    stack.killAllNow()
    stack.close().catch(() => {}).finally(() => process.exit(130))
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  const failures: string[] = []
  const table: string[][] = []
  try {
    log(`bench: ${quick ? 'quick, ' : ''}${reps} repetition(s), queues on ${stack.settings.queueBackend}, scenarios ${selected.join(',')}; databases ${stack.oursDb}, ${stack.refDb}; prefix ${stack.prefix}`)
    if (!stack.settings.tsx) {
      const building = Date.now()
      buildForBench()
      log(`compiled ours and the reference with tsc in ${round((Date.now() - building) / 1000, 1)} s (BENCH_TSX=1 runs the sources through tsx instead)`)
    }
    await stack.start()
    if (Object.keys(workerEnv).length > 0) await stack.restartWorkers(workerEnv)
    const ours: Target = {
      name: 'ours',
      urls: stack.apis.map((a) => a.url),
      sql: stack.oursSql,
      database: stack.oursDb,
      pids: () => ({ api: stack.apis.map((p) => p.child.pid ?? 0), worker: stack.workers.map((p) => p.child.pid ?? 0) }),
      // INFO commandstats is server-wide: only ours counts it (the reference uses no Redis).
      redis: stack.settings.queueBackend === 'redis' ? stack.redis : undefined,
    }
    const reference: Target = { name: 'reference', urls: [stack.reference?.url as string], sql: stack.refSql, database: stack.refDb, pids: () => ({ reference: [stack.reference?.child.pid ?? 0] }) }

    // Warm-up (JIT, pools, connections), not reported: one hot option, many
    // options at once, then a single buyer, so the first repetition of no shape
    // measures code still being compiled (ours has a path per shape: group
    // commit of many options' batches; a lone buyer's statement at once on the
    // lease held from the last, which concurrent shapes seldom take; the
    // reference has one).
    const warmShapes: Scenario[] = [
      { ...(SCENARIOS.hot64 as Scenario), name: 'warmup', total: 3000, allocation: 1000 },
      { ...(SCENARIOS.spread as Scenario), name: 'warmup-spread', total: 3000, allocation: 20 },
      { ...(SCENARIOS.latency as Scenario), name: 'warmup-latency', total: 2000 },
    ]
    const warm = async (t: Target): Promise<void> => { for (const shape of warmShapes) await runScenario(t, shape) }
    for (const t of [ours, reference]) await warm(t)
    log(`stack up and warm after ${round((Date.now() - began) / 1000, 1)} s`)

    const comparative = selected.filter((s) => SCENARIOS[s] !== undefined)
    const runs = new Map<string, { ours: RunFigures[], reference: RunFigures[] }>()
    for (const s of comparative) runs.set(s, { ours: [], reference: [] })
    for (let rep = 0; rep < reps; rep++) {
      for (const s of comparative) {
        // Alternate who goes first, so neither always gets the fresher machine.
        const order = (rep + comparative.indexOf(s)) % 2 === 0 ? [ours, reference] : [reference, ours]
        for (const t of order) {
          const r = await runScenario(t, SCENARIOS[s] as Scenario)
          runs.get(s)?.[t.name].push(r)
          log(describeRun(r))
        }
      }
    }

    table.push(['scenario', 'ours /s', 'ref /s', 'ours/ref', 'ours p50/p95/p99/max ms', 'ref p50/p95/p99/max ms', 'ours statuses', 'ref statuses', 'checks'])
    for (const s of comparative) {
      const r = runs.get(s) as { ours: RunFigures[], reference: RunFigures[] }
      const o = aggregate(r.ours)
      const f = aggregate(r.reference)
      const ratio = round(o.purchasesPerSecond / f.purchasesPerSecond, 2)
      const p50Ratio = round(o.p50 / f.p50, 2)
      const ok = o.checksPassed && f.checksPassed
      if (!ok) failures.push(`${s}: ${[...r.ours, ...r.reference].flatMap((x) => x.failures.map((m) => `${x.target} ${m}`)).join('; ')}`)
      const statuses = (a: Aggregate): string => Object.entries(a.byStatus).map(([k, v]) => `${k}:${v}`).join(' ') +
        (a.settled.succeeded + a.settled.rejected + a.settled.unsettled > 0 ? ` (202→ ok ${a.settled.succeeded}, rej ${a.settled.rejected}, pending ${a.settled.unsettled})` : '')
      table.push([s, String(o.purchasesPerSecond), String(f.purchasesPerSecond), `${ratio}×`,
        `${o.p50}/${o.p95}/${o.p99}/${o.max}`, `${f.p50}/${f.p95}/${f.p99}/${f.max}`, statuses(o), statuses(f), ok ? 'pass' : 'FAIL'])
      emit({
        scenario: s,
        description: (SCENARIOS[s] as Scenario).description,
        repetitions: reps,
        ratio,
        p50Ratio,
        p99Ratio: round(o.p99 / f.p99, 2),
        ours: { ...o, runs: undefined },
        reference: { ...f, runs: undefined },
        runs: [...r.ours, ...r.reference],
        checksPassed: ok,
      })
    }

    if (selected.includes('batch_off')) {
      const on = runs.get('hot256')?.ours ?? []
      log('batching off: restarting the worker with WORKER_BATCH_SIZE=1')
      await stack.restartWorkers({ ...workerEnv, WORKER_BATCH_SIZE: '1' })
      const off: RunFigures[] = []
      // Batching on measured again side by side when hot256 was not part of this run.
      for (let rep = 0; rep < reps; rep++) {
        const r = await runScenario(ours, SCENARIOS.hot256 as Scenario)
        r.scenario = 'hot256-batch-off'
        off.push(r)
        log(describeRun(r))
      }
      await stack.restartWorkers(workerEnv)
      if (on.length === 0) {
        for (let rep = 0; rep < reps; rep++) {
          const r = await runScenario(ours, SCENARIOS.hot256 as Scenario)
          on.push(r)
          log(describeRun(r))
        }
      }
      const a = aggregate(on)
      const b = aggregate(off)
      const ratio = round(a.purchasesPerSecond / b.purchasesPerSecond, 2)
      if (!b.checksPassed) failures.push(`batch_off: ${off.flatMap((x) => x.failures).join('; ')}`)
      table.push(['hot256 batching on/off', String(a.purchasesPerSecond), String(b.purchasesPerSecond) + ' (off)', `${ratio}×`,
        `${a.p50}/${a.p95}/${a.p99}/${a.max}`, `${b.p50}/${b.p95}/${b.p99}/${b.max} (off)`,
        Object.entries(a.byStatus).map(([k, v]) => `${k}:${v}`).join(' '), Object.entries(b.byStatus).map(([k, v]) => `${k}:${v}`).join(' '),
        b.checksPassed ? 'pass' : 'FAIL'])
      emit({ scenario: 'batch_on_vs_off', description: 'ours, hot256, WORKER_BATCH_SIZE default vs 1', repetitions: reps, ratio, on: { ...a, runs: undefined }, off: { ...b, runs: undefined }, runs: off, checksPassed: b.checksPassed })
    }

    if (selected.includes('tracing')) {
      // Tracing off is what every run above measured (no OTEL_* set: no SDK
      // loaded). On: every API and worker exports its spans to a local sink,
      // every purchase traced, then one in ten (the sampler operators would use).
      const sink = await startTraceSink()
      const measured = TRACING_SCENARIOS.filter((s) => SCENARIOS[s] !== undefined)
      const variants: Array<{ name: string, env: Record<string, string>, runs: Map<string, RunFigures[]> }> = [
        { name: 'off', env: {}, runs: new Map(measured.map((s) => [s, [...(runs.get(s)?.ours ?? [])]])) },
        { name: 'on', env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url }, runs: new Map(measured.map((s) => [s, []])) },
        { name: 'on 10%', env: { OTEL_EXPORTER_OTLP_ENDPOINT: sink.url, OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.1' }, runs: new Map(measured.map((s) => [s, []])) },
      ]
      for (const variant of variants) {
        if (variant.name !== 'off') {
          log(`tracing ${variant.name}: restarting ours with ${Object.entries(variant.env).map(([k, v]) => `${k}=${v}`).join(' ')}`)
          ours.urls = await stack.restartOurs(variant.env, { ...workerEnv, ...variant.env })
          await warm(ours)
        }
        for (const s of measured) {
          const done = variant.runs.get(s) ?? []
          for (let rep = done.length; rep < reps; rep++) {
            const r = await runScenario(ours, SCENARIOS[s] as Scenario)
            if (variant.name !== 'off') r.scenario = `${s}-traced-${variant.name.replace(/\W+/g, '')}`
            done.push(r)
            log(describeRun(r))
          }
        }
      }
      const received = sink.received()
      log(`tracing: the sink received ${received.exports} exports, ${round(received.bytes / 1024 / 1024, 1)} MiB`)
      ours.urls = await stack.restartOurs({}, workerEnv)
      await sink.close()
      const cpu = (runsOf: RunFigures[]): number => round(median(runsOf.map((r) => r.cpuMsPerPurchase.servers)), 3)
      for (const s of measured) {
        const [off, ...ons] = variants.map((v) => ({ name: v.name, runs: v.runs.get(s) ?? [], figures: aggregate(v.runs.get(s) ?? []) }))
        if (off === undefined) continue
        for (const on of ons) {
          if (!on.figures.checksPassed) failures.push(`tracing ${on.name} ${s}: ${on.runs.flatMap((x) => x.failures).join('; ')}`)
          table.push([`${s} tracing off/${on.name}`, `${off.figures.purchasesPerSecond} (off)`, `${on.figures.purchasesPerSecond} (${on.name})`, `${round(on.figures.purchasesPerSecond / off.figures.purchasesPerSecond, 2)}× ${on.name}/off`,
            `${off.figures.p50}/${off.figures.p95}/${off.figures.p99}/${off.figures.max} (off)`, `${on.figures.p50}/${on.figures.p95}/${on.figures.p99}/${on.figures.max} (${on.name})`,
            `server CPU ${cpu(off.runs)} ms/purchase (off)`, `${cpu(on.runs)} ms/purchase (${on.name})`, on.figures.checksPassed ? 'pass' : 'FAIL'])
        }
        emit({
          scenario: `tracing_${s}`,
          description: `ours, ${s}: tracing off (no OTEL_*), on (OTLP to a local sink), on with 10 % sampled`,
          repetitions: reps,
          variants: Object.fromEntries([off, ...ons].map((v) => [v.name, { ...v.figures, runs: undefined, serverCpuMsPerPurchase: cpu(v.runs) }])),
          exports: received,
          runs: ons.flatMap((v) => v.runs),
          checksPassed: ons.every((v) => v.figures.checksPassed),
        })
      }
    }

    if (selected.includes('sweep')) {
      // Replicas on `spread`: what one more worker or API buys, and what each
      // process and store spends per purchase (the capacity plan's inputs).
      const spreadRef = runs.get('spread')?.reference ?? []
      if (spreadRef.length === 0) {
        for (let rep = 0; rep < reps; rep++) {
          const r = await runScenario(reference, SCENARIOS.spread as Scenario)
          spreadRef.push(r)
          log(describeRun(r))
        }
      }
      const refRate = aggregate(spreadRef).purchasesPerSecond
      for (const [apis, workers] of SWEEP) {
        log(`sweep: ${apis} API(s), ${workers} worker(s)`)
        ours.urls = await stack.resize(apis, workers, {}, workerEnv)
        await warm(ours)
        const sweepRuns: RunFigures[] = []
        for (let rep = 0; rep < reps; rep++) {
          // PostgreSQL's counts need a 22 s wait (scenarios.ts PG_STATS_FLUSH_MS): the first repetition only.
          const r = await runScenario(ours, SCENARIOS.spread as Scenario, undefined, rep === 0)
          r.scenario = `spread-${apis}a${workers}w`
          sweepRuns.push(r)
          log(describeRun(r))
        }
        // Redis connections now, while every option's Worker is still open (each holds a blocking connection).
        const clients = Number(/connected_clients:(\d+)/.exec(await stack.redis?.info('clients') ?? '')?.[1] ?? -1)
        const a = aggregate(sweepRuns)
        const med = (pick: (r: RunFigures) => number, digits = 3): number => round(median(sweepRuns.map(pick)), digits)
        const perProcess = {
          api: med((r) => (r.cpuMsPerPurchase.byRole.api ?? 0)),
          worker: med((r) => (r.cpuMsPerPurchase.byRole.worker ?? 0)),
          postgres: med((r) => r.cpuMsPerPurchase.postgres),
          redis: med((r) => r.cpuMsPerPurchase.redis),
        }
        const counted = sweepRuns[0]?.opsPerPurchase
        const ops = {
          redisCommands: med((r) => r.opsPerPurchase.redisCommands, 2),
          pgTransactions: counted?.pgTransactions ?? -1,
          pgRowsWritten: counted?.pgRowsWritten ?? -1,
        }
        if (!a.checksPassed) failures.push(`sweep ${apis}a${workers}w: ${sweepRuns.flatMap((x) => x.failures).join('; ')}`)
        table.push([`spread, ${apis} API + ${workers} worker${workers > 1 ? 's' : ''}`, String(a.purchasesPerSecond), String(refRate), `${round(a.purchasesPerSecond / refRate, 2)}×`,
          `${a.p50}/${a.p95}/${a.p99}/${a.max}`, '',
          `CPU ms/purchase: api ${perProcess.api} worker ${perProcess.worker} pg ${perProcess.postgres} redis ${perProcess.redis}`,
          `ops/purchase: redis ${ops.redisCommands}, pg tx ${ops.pgTransactions}, pg rows written ${ops.pgRowsWritten}; redis clients ${clients}`,
          a.checksPassed ? 'pass' : 'FAIL'])
        emit({ scenario: 'sweep', apis, workers, description: `ours, spread, ${apis} API(s) and ${workers} worker(s); CPU per purchase summed over the processes of each kind`, repetitions: reps, ours: { ...a, runs: undefined }, referencePerSecond: refRate, cpuMsPerPurchase: perProcess, opsPerPurchase: ops, redisConnectedClients: clients, redisByCommand: sweepRuns[0]?.opsPerPurchase.redisByCommand, runs: sweepRuns, checksPassed: a.checksPassed })
      }
      ours.urls = await stack.resize(stack.settings.apis, stack.settings.workers, {}, workerEnv)
    }

    if (selected.includes('ops')) {
      // Store operations per purchase, ours and the reference, one run each
      // with PostgreSQL's statistics waited for (the capacity plan's inputs).
      for (const name of OPS_SCENARIOS) {
        const measured: Record<string, RunFigures> = {}
        for (const target of [ours, reference]) {
          const r = await runScenario(target, SCENARIOS[name] as Scenario, undefined, true)
          measured[target.name] = r
          log(describeRun(r))
          if (r.failures.length > 0) failures.push(`ops ${name} ${target.name}: ${r.failures.join('; ')}`)
        }
        const o = measured.ours
        const f = measured.reference
        if (o === undefined || f === undefined) continue
        const opsText = (r: RunFigures): string => `redis ${r.opsPerPurchase.redisCommands}, pg tx ${r.opsPerPurchase.pgTransactions}, rows written ${r.opsPerPurchase.pgRowsWritten}, rows read ${r.opsPerPurchase.pgRowsRead}`
        table.push([`${name}: operations per purchase`, String(o.purchasesPerSecond), String(f.purchasesPerSecond), `${round(o.purchasesPerSecond / f.purchasesPerSecond, 2)}×`, '', '',
          `ours: ${opsText(o)}`, `ref: ${opsText(f)}`, o.failures.length + f.failures.length === 0 ? 'pass' : 'FAIL'])
        emit({ scenario: `ops_${name}`, description: `operations per purchase on ${name}: Redis INFO commandstats, PostgreSQL pg_stat_database (waited ${PG_STATS_FLUSH_MS} ms)`, ours: o.opsPerPurchase, reference: f.opsPerPurchase, oursCpu: o.cpuMsPerPurchase, referenceCpu: f.cpuMsPerPurchase, runs: [o, f], checksPassed: o.failures.length + f.failures.length === 0 })
      }
    }

    if (selected.includes('memory') && stack.settings.queueBackend === 'redis' && stack.redis !== undefined) {
      // Redis memory per queued and per completed job (kept for an hour, at
      // most 10,000 per option: shared/queues/redis-queue-backend.ts).
      const redis = stack.redis
      const usedMemory = async (): Promise<number> => Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1] ?? NaN)
      const jobs = MEMORY_JOBS
      log(`memory: ${jobs} purchases queued with no worker (PURCHASE_WAIT_MS=0: answered 202 at once), then applied`)
      ours.urls = await stack.resize(1, 0, { PURCHASE_WAIT_MS: '0' }, workerEnv)
      const created = await call(ours.urls[0] as string, 'POST', '/ticket_options', { name: 'bench memory', desc: 'bench', allocation: jobs })
      const optionId = created.body.id as string
      const empty = await usedMemory()
      const queued = await runPurchases({ urls: ours.urls, total: jobs, concurrency: 64, spec: () => ({ optionId, quantity: 1 }) })
      const full = await usedMemory()
      const workerProc = await stack.startWorker(0, workerEnv)
      stack.workers.push(workerProc)
      const deadline = Date.now() + 120_000
      while (Date.now() < deadline) {
        const { rows } = await stack.oursSql.query<{ n: number }>('select count(*)::int as n from purchases where ticket_option_id = $1', [optionId])
        if (rows[0]?.n === jobs) break
        await sleep(250)
      }
      await sleep(1000) // the last jobs' completion
      const done = await usedMemory()
      const perQueued = round((full - empty) / jobs, 0)
      const perCompleted = round((done - empty) / jobs, 0)
      const answered202 = queued.byStatus['202'] ?? 0
      const ok = answered202 === jobs
      if (!ok) failures.push(`memory: ${JSON.stringify(queued.byStatus)} (wanted ${jobs} × 202)`)
      table.push([`Redis memory per job (${jobs} jobs)`, `${perQueued} B queued`, `${perCompleted} B completed`, '', '', '', `used_memory ${round(empty / 1048576, 1)}→${round(full / 1048576, 1)}→${round(done / 1048576, 1)} MiB`, '', ok ? 'pass' : 'FAIL'])
      emit({ scenario: 'memory', description: `ours: Redis used_memory with ${jobs} purchase jobs queued (no worker), then applied and kept as completed`, jobs, bytesPerQueuedJob: perQueued, bytesPerCompletedJob: perCompleted, usedMemory: { empty, full, done }, statuses: queued.byStatus, checksPassed: ok })
      ours.urls = await stack.resize(stack.settings.apis, stack.settings.workers, {}, workerEnv)
    }

    if (selected.includes('soak')) {
      const scenario = soakScenario(soakSeconds)
      const pids = [...stack.apis, ...stack.workers].map((p) => ({ name: p.name, pid: p.child.pid }))
      const samples: Array<{ t: number, rss: Record<string, number | null> }> = []
      const sample = (t: number): void => { samples.push({ t: Math.round(t / 1000), rss: Object.fromEntries(pids.map((p) => [p.name, rssMiB(p.pid)])) }) }
      sample(0)
      log(`soak: ${soakSeconds} s at concurrency 256, RSS ${JSON.stringify(samples[0]?.rss)}`)
      const r = await runScenario(ours, scenario, (t) => { if (Math.round(t / 1000) % 10 === 0) sample(t) })
      sample(Number(r.elapsedMs))
      log(describeRun(r))
      const first = samples[0] as { rss: Record<string, number | null> }
      // RSS saws up and down with garbage collection, so one sample against
      // another says little (a first run failed with 174 -> 207 MiB while the
      // API ended below where it started). "Flat": the peak of the second half
      // is at most 15 % above the peak of the first; a leak keeps climbing.
      const mid = samples.find((s) => s.t >= soakSeconds / 2) ?? first
      const last = samples[samples.length - 1] as { rss: Record<string, number | null> }
      const peak = (part: typeof samples, name: string): number | null => {
        const values = part.map((s) => s.rss[name]).filter((v): v is number => v != null)
        return values.length === 0 ? null : Math.max(...values)
      }
      const flat = pids.every((p) => {
        const a = peak(samples.filter((s) => s.t < soakSeconds / 2), p.name)
        const b = peak(samples.filter((s) => s.t >= soakSeconds / 2), p.name)
        return a != null && b != null && b <= a * 1.15
      })
      const ok = r.failures.length === 0 && flat
      if (!ok) failures.push(`soak: ${[...r.failures, ...(flat ? [] : ['RSS not flat'])].join('; ')}`)
      const rssText = pids.map((p) => `${p.name} ${first.rss[p.name]}→${mid.rss[p.name]}→${last.rss[p.name]} MiB`).join(', ')
      table.push([`soak ${soakSeconds}s`, String(r.purchasesPerSecond), '', '', `${r.latencyMs.p50}/${r.latencyMs.p95}/${r.latencyMs.p99}/${r.latencyMs.max}`, '',
        Object.entries(r.byStatus).map(([k, v]) => `${k}:${v}`).join(' '), `RSS start→middle→end: ${rssText}`, ok ? 'pass' : 'FAIL'])
      emit({ scenario: 'soak', description: scenario.description, ours: r, rssMiB: samples, rssFlat: flat, checksPassed: ok })
    }
  } finally {
    if (!interrupted) {
      log('stopping the stack and removing the bench databases…')
      await stack.close()
    }
  }

  printTable(table)
  const machine = `${cpus().length} × ${cpus()[0]?.model ?? '?'}, Node ${process.version}`
  log(`\nmachine: ${machine}; wall time ${round((Date.now() - began) / 1000, 0)} s; results in ${path.relative(ROOT, resultsFile)}`)
  if (profile) {
    for (const dir of readdirSync(PROFILE_DIR).filter((d) => d.startsWith(stack.suffix))) {
      // The main thread's profile is the biggest (the other is tsx's loader thread).
      const files = readdirSync(path.join(PROFILE_DIR, dir)).filter((f) => f.endsWith('.cpuprofile'))
        .map((f) => path.join(PROFILE_DIR, dir, f)).sort((a, b) => statSync(b).size - statSync(a).size)
      if (files[0] !== undefined) log(summarizeProfiles([files[0]], 30).replace('== ', `== ${dir}: `))
    }
  }
  if (failures.length > 0) {
    log(`\nFAILED: ${failures.join('\n  ')}`)
    process.exitCode = 1
  }
}

function printTable (rows: string[][]): void {
  if (rows.length === 0) return
  const widths = (rows[0] as string[]).map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)))
  const line = (r: string[]): string => `| ${r.map((cell, c) => cell.padEnd(widths[c] as number)).join(' | ')} |`
  log('')
  log(line(rows[0] as string[]))
  log(`|${(widths).map((w) => '-'.repeat(w + 2)).join('|')}|`)
  for (const r of rows.slice(1)) log(line(r))
}

main().catch((err: unknown) => {
  log(`bench failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`)
  process.exitCode = 1
})
