/**
 * docker-compose.yml and the Dockerfile, without Docker (none on CI machines
 * like this one): the compose file is valid against the Compose Specification,
 * every command the image and compose run exists and starts, and the compose
 * topology (migrate, 1 API, 2 workers) works natively with exactly the
 * environment compose gives each service, only addresses swapped for local ones.
 *
 * compose-spec.json is vendored verbatim from compose-spec/compose-spec,
 * schema/compose-spec.json at commit 00655e2222608fa6eaecdf12ac5195889ca2244a
 * (draft-07, `$id: compose_spec.json`). Update it by copying a newer one over.
 */
import { spawn, spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Ajv from 'ajv'
import addFormats from 'ajv-formats'
import pg from 'pg'
import t, { type Test } from 'tap'
import { Pool } from 'undici'
import { API_SHUTDOWN_GRACE_MS } from '../../api/server'
import { EnvSchema, loadConfig } from '../../shared/config'
import { WORKER_SHUTDOWN_BUDGET_MS } from '../../worker/main'
import { ADMIN_DATABASE_URL, createTestEnvironment, randomSuffix, unbalancedOptions, type Teardown, type TestEnvironment } from '../support/environment'
import { ROOT, startProcess, type ServiceProcess } from '../support/processes'
import { freePort } from '../support/free-port'
import { commandWords, durationMs, interpolateDeep, mergeCompose, NO_REDIS_FILE, readCompose, readComposeRaw, readDockerfile, REDIS_CLUSTER_FILE, serviceEnvironment, type ComposeFile } from './compose-file'

const APP_SERVICES = ['migrate', 'api', 'worker'] as const
const USER_ID = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

function compileComposeSchema (): (data: unknown) => boolean {
  const schema = JSON.parse(readFileSync(path.join(__dirname, 'compose-spec.json'), 'utf8')) as Record<string, unknown>
  // The schema names its meta-schema with https and no '#', which Ajv does not
  // register under that key; it is draft-07, Ajv's default dialect.
  const ajv = new Ajv({ allErrors: true, strict: false, validateSchema: false })
  addFormats(ajv)
  const validate = ajv.compile(schema)
  return (data) => {
    const ok = validate(data)
    if (!ok) t.comment(ajv.errorsText(validate.errors, { separator: '\n' }))
    return ok
  }
}

interface Ran { code: number | null, output: string }

/** Runs a command to its end (or kills it after timeoutMs). */
async function run (command: string, args: string[], options: { cwd?: string, env?: Record<string, string>, timeoutMs?: number } = {}): Promise<Ran> {
  const child = spawn(command, args, { cwd: options.cwd ?? ROOT, env: { PATH: process.env.PATH ?? '', ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const timer = setTimeout(() => { child.kill('SIGKILL') }, options.timeoutMs ?? 60_000)
  const code = await new Promise<number | null>((resolve) => { child.once('exit', (c) => { resolve(c) }) })
  clearTimeout(timer)
  return { code, output }
}

/** Starts a command, waits for a line matching `ready`, sends SIGTERM, and returns the exit code. */
async function startAndStop (t: Teardown, args: string[], cwd: string, env: Record<string, string>, ready: RegExp): Promise<{ started: boolean, code: number | null, output: string }> {
  const child = spawn(process.execPath, args, { cwd, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (c) => { resolve(c) }) })
  t.teardown(async () => { if (child.exitCode === null && child.signalCode === null) { child.kill('SIGKILL'); await exited } })
  let output = ''
  const started = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => { resolve(false) }, 20_000)
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      if (ready.test(output)) { clearTimeout(timer); resolve(true) }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    void exited.then(() => { clearTimeout(timer); resolve(false) })
  })
  if (started) child.kill('SIGTERM')
  return { started, code: await exited, output }
}

/**
 * A service's compose environment, run here: the service hostnames become this
 * machine's PostgreSQL and Redis (with the test's own database and key prefix),
 * and fixed ports become free ones. Everything else is what compose sets.
 */
function localEnvironment (compose: ComposeFile, service: string, environment: TestEnvironment): Record<string, string> {
  const env = serviceEnvironment(compose, service)
  const local = { ...env }
  const services = Object.keys(compose.services)
  for (const [name, replacement] of [['DATABASE_URL', environment.databaseUrl], ['REDIS_URL', environment.redisUrl]] as const) {
    const host = new URL(env[name] ?? '').hostname
    if (!services.includes(host)) throw new Error(`${service}: ${name} does not point at a compose service (${host})`)
    local[name] = replacement
  }
  local.QUEUE_PREFIX = environment.prefix
  if (local.PORT !== undefined) local.PORT = '0'
  if (local.WORKER_HEALTH_PORT !== undefined) local.WORKER_HEALTH_PORT = '0'
  return local
}

/** The health check of a service as the container runs it (`CMD node -e ...`), here with `env`. */
async function runHealthCheck (compose: ComposeFile, service: string, env: Record<string, string>): Promise<number | null> {
  const words = commandWords(compose.services[service]?.healthcheck?.test ?? [])
  if (words[0] !== 'CMD' || words[1] !== 'node') throw new Error(`${service}: health check is not CMD node ...`)
  return (await run(process.execPath, words.slice(2), { env, timeoutMs: 10_000 })).code
}

t.test('docker-compose.yml is valid against the Compose Specification', async (t) => {
  const validate = compileComposeSchema()
  t.ok(validate(readComposeRaw()), 'as written (merge keys resolved)')
  t.ok(validate(readCompose({})), 'interpolated with defaults')
  t.ok(validate(readCompose({ WORKER_REPLICAS: '4', API_PORT: '8080' })), 'interpolated with overrides')
  const broken = readCompose({})
  ;(broken.services.api as Record<string, unknown>).helthcheck = { test: ['CMD', 'true'] }
  t.notOk(validate(broken), 'a misspelt key is refused (the validator can fail)')
  const wrongCondition = readCompose({})
  ;(wrongCondition.services.api as Record<string, unknown>).depends_on = { migrate: { condition: 'service_done' } }
  t.notOk(validate(wrongCondition), 'an unknown depends_on condition is refused')
})

/** docker-compose.yml with an override file merged in, checked against the schema, interpolated with defaults; the single Redis must be off. */
function mergedWith (t: Test, override: string): ComposeFile {
  const raw = mergeCompose(readComposeRaw(), readComposeRaw(override)) as ComposeFile
  t.ok(compileComposeSchema()(raw), 'the merged file is valid against the Compose Specification')
  const merged = interpolateDeep(raw, {}) as ComposeFile
  t.same(merged.services.redis?.profiles, ['redis'], 'the single Redis is not started (its profile is never active)')
  return merged
}

t.test('docker-compose.no-redis.yml runs the stack with its queues on PostgreSQL and no Redis', async (t) => {
  const merged = mergedWith(t, NO_REDIS_FILE)
  for (const name of APP_SERVICES) {
    const config = loadConfig(serviceEnvironment(merged, name))
    t.equal(config.queueBackend, 'postgres', `${name}: queues on PostgreSQL`)
    const redisDependency = merged.services[name]?.depends_on?.redis
    t.ok(redisDependency === undefined || redisDependency.required === false, `${name}: does not wait for Redis`)
  }
  t.same(merged.services.migrate?.depends_on, { postgres: { condition: 'service_healthy' } })
  t.equal(readCompose().services.api?.depends_on?.redis?.required, undefined, 'the main file still needs Redis')
})

t.test('docker-compose.redis-cluster.yml runs the stack on a 6-node Redis Cluster', async (t) => {
  const merged = mergedWith(t, REDIS_CLUSTER_FILE)
  const nodes = Object.keys(merged.services).filter((name) => /^redis-node-\d$/.test(name))
  t.equal(nodes.length, 6, 'six nodes: 3 masters, 3 replicas')
  for (const name of nodes) {
    const command = commandWords(merged.services[name]?.command ?? []).join(' ')
    t.match(command, /--cluster-enabled yes/, `${name}: cluster mode`)
    t.match(command, /--appendonly yes.*--maxmemory-policy noeviction/, `${name}: AOF on, never evicts`)
    t.ok(merged.services[name]?.volumes?.some((v) => v.startsWith(`${name}-data:`)), `${name}: data on its own volume`)
  }
  const init = merged.services['redis-cluster-init']
  t.same(Object.keys(init?.depends_on ?? {}).sort(), [...nodes].sort(), 'the cluster is formed once every node is up')
  const script = commandWords(init?.command ?? []).join('\n')
  t.match(script, /redis-cli --cluster create \$nodes --cluster-replicas 1 --cluster-yes/)
  t.equal(spawnSync('sh', ['-n', '-c', script]).status, 0, 'the init script is valid sh after interpolation ($$ is $)')
  for (const name of APP_SERVICES) {
    const config = loadConfig(serviceEnvironment(merged, name))
    t.equal(config.queueBackend, 'redis', `${name}: queues on Redis`)
    t.same(config.redisClusterNodes?.map((n) => n.host), nodes, `${name}: REDIS_CLUSTER_NODES names the nodes`)
  }
  for (const name of ['api', 'worker']) {
    t.same(merged.services[name]?.depends_on?.['redis-cluster-init'], { condition: 'service_completed_successfully' }, `${name} waits for the cluster`)
    t.equal(merged.services[name]?.depends_on?.redis?.required, false, `${name} does not wait for the single Redis`)
  }
})

t.test('the compose stack is what the service needs', async (t) => {
  const compose = readCompose({})
  const { postgres, redis, migrate, api, worker } = compose.services
  t.ok(postgres?.healthcheck !== undefined, 'postgres has a health check')
  t.ok(postgres?.volumes?.some((v) => /^postgres-data:\/var\/lib\/postgresql\/data$/.test(v)), 'postgres data on a named volume')
  t.ok(compose.volumes !== undefined && 'postgres-data' in compose.volumes && 'redis-data' in compose.volumes, 'named volumes declared')
  const redisCommand = commandWords(redis?.command ?? []).join(' ')
  t.match(redisCommand, /--appendonly yes/, 'redis AOF on')
  t.match(redisCommand, /--maxmemory-policy noeviction/, 'redis never evicts queue keys')
  t.ok(redis?.healthcheck !== undefined, 'redis has a health check')
  t.same(migrate?.depends_on, { postgres: { condition: 'service_healthy' } }, 'migrate waits for a healthy postgres')
  t.equal(migrate?.restart, 'no', 'migrate is one-shot')
  for (const [name, service] of [['api', api], ['worker', worker]] as const) {
    t.same(service?.depends_on?.migrate, { condition: 'service_completed_successfully' }, `${name} waits for migrate to succeed`)
    t.equal(service?.depends_on?.redis?.condition, 'service_healthy', `${name} waits for a healthy redis`)
    t.equal(serviceEnvironment(compose, name).HOST, '0.0.0.0', `${name} listens on every interface`)
    t.match(commandWords(service?.healthcheck?.test ?? []).join(' '), /\/health\/ready/, `${name} health check asks /health/ready`)
  }
  t.ok(api?.ports?.includes('3000:3000'), 'api published on 3000')
  t.equal(readCompose({ API_PORT: '8080' }).services.api?.ports?.[0], '8080:3000', 'API_PORT moves the published port')
  t.equal(worker?.deploy?.replicas, '2', 'two workers by default')
  t.equal(readCompose({ WORKER_REPLICAS: '4' }).services.worker?.deploy?.replicas, '4', 'WORKER_REPLICAS overrides')
  t.equal(worker?.ports, undefined, 'workers publish no port (replicas would collide)')
  t.ok(durationMs(worker?.stop_grace_period ?? '0s') > WORKER_SHUTDOWN_BUDGET_MS, `worker stop_grace_period ${worker?.stop_grace_period ?? '?'} > ${WORKER_SHUTDOWN_BUDGET_MS} ms budget`)
  const apiConfig = loadConfig(serviceEnvironment(compose, 'api'))
  const apiBudget = apiConfig.purchaseWaitMs + API_SHUTDOWN_GRACE_MS
  t.ok(durationMs(api?.stop_grace_period ?? '0s') > apiBudget, `api stop_grace_period ${api?.stop_grace_period ?? '?'} > ${apiBudget} ms budget`)

  const known = new Set(Object.keys(EnvSchema.properties))
  for (const name of APP_SERVICES) {
    const env = serviceEnvironment(compose, name)
    // OTEL_* are the OpenTelemetry SDK's own standard variables (shared/telemetry/tracing.ts).
    t.same(Object.keys(env).filter((key) => !known.has(key) && !key.startsWith('OTEL_')), [], `${name}: every variable is one the app reads`)
    t.doesNotThrow(() => loadConfig(env), `${name}: the environment is a valid config`)
    t.ok(compose.services[name]?.build !== undefined && compose.services[name]?.image === api?.image, `${name}: built from this repository, one image`)
  }
})

t.test('every command of the Dockerfile and compose exists, in the image layout', async (t) => {
  const scripts = (JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts
  const stages = readDockerfile()
  t.ok(stages.length >= 2, 'multi-stage')
  t.match(stages[0]?.base, /^node:22-/, 'Node 22 LTS')
  const runtime = stages.at(-1) as (typeof stages)[number]
  t.equal(runtime.base, stages[0]?.base, 'runtime on the same Node image')
  t.ok(runtime.instructions.some((i) => i.op === 'USER' && i.args === 'node'), 'runs as the non-root user node')
  for (const stage of stages) {
    for (const { op, args } of stage.instructions) {
      if (op !== 'RUN') continue
      for (const [, script] of args.matchAll(/npm run (\S+)/g)) t.ok(scripts[script as string] !== undefined, `${stage.name}: npm run ${script ?? ''} exists`)
      if (stage === runtime) t.match(args, /npm ci --omit=dev/, 'runtime installs production dependencies only')
    }
  }

  // Build as the Dockerfile does, into a temporary copy of the runtime image's /app.
  const app = mkdtempSync(path.join(os.tmpdir(), 'image-app-'))
  t.teardown(() => { rmSync(app, { recursive: true, force: true }) })
  const tsc = (scripts.build ?? '').split('&&').map((part) => part.trim()).find((part) => part.startsWith('tsc '))
  t.ok(tsc, 'the build script runs tsc')
  const built = await run(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), ...(tsc ?? '').split(/\s+/).slice(1), '--outDir', path.join(app, 'dist')], { timeoutMs: 120_000 })
  t.equal(built.code, 0, `tsc builds: ${built.output.slice(0, 2000)}`)
  for (const { op, args } of runtime.instructions) {
    if (op !== 'COPY') continue
    const words = args.split(/\s+/)
    const target = path.join(app, words.at(-1) as string)
    const sources = words.slice(0, -1)
    if (sources[0]?.startsWith('--from=')) {
      t.same(sources.slice(1), ['/app/dist'], 'the runtime copies dist/ from the build stage')
      continue // built above
    }
    for (const source of sources) {
      const dir = path.dirname(source)
      const pattern = new RegExp(`^${path.basename(source).replace(/\./g, '\\.').replace(/\*/g, '.*')}$`)
      const matches = readdirSync(path.join(ROOT, dir)).filter((f) => pattern.test(f))
      t.ok(matches.length > 0, `COPY ${source} matches files`)
      for (const file of matches) {
        const into = target.endsWith('/') || sources.length > 1 || source.includes('*') ? path.join(target, file) : target
        mkdirSync(path.dirname(into), { recursive: true })
        cpSync(path.join(ROOT, dir, file), into, { recursive: true }) // a file, or a folder such as examples/
      }
    }
  }
  symlinkSync(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'))

  const compose = readCompose({})
  const entryPoints = new Set<string>()
  for (const words of [commandWords(runtime.instructions.find((i) => i.op === 'CMD')?.args ?? '[]'), ...APP_SERVICES.map((name) => commandWords(compose.services[name]?.command ?? []))]) {
    t.equal(words[0], 'node', `${words.join(' ')} runs node`)
    entryPoints.add(words[1] as string)
  }
  for (const entry of entryPoints) t.ok(existsSync(path.join(app, entry)), `${entry} exists after the build`)

  // The compiled migrate finds its .sql files in the image layout, and creates the database.
  const database = `tickets_test_${randomSuffix()}_image`
  const url = new URL(ADMIN_DATABASE_URL)
  url.pathname = `/${database}`
  t.teardown(async () => {
    const admin = new pg.Client({ connectionString: ADMIN_DATABASE_URL })
    await admin.connect()
    await admin.query(`drop database if exists ${database} with (force)`)
    await admin.end()
  })
  const migrateWords = commandWords(compose.services.migrate?.command ?? [])
  const migrated = await run(process.execPath, migrateWords.slice(1), { cwd: app, env: { ...serviceEnvironment(compose, 'migrate'), DATABASE_URL: url.toString() } })
  t.equal(migrated.code, 0, `compiled migrate exits 0: ${migrated.output.slice(-1500)}`)
  const check = new pg.Client({ connectionString: url.toString() })
  await check.connect()
  const applied = Number((await check.query('select count(*) as n from schema_migrations')).rows[0].n)
  await check.end()
  const sqlFiles = readdirSync(path.join(ROOT, 'migrations')).filter((f) => f.endsWith('.sql')).length
  t.equal(applied, sqlFiles, `all ${sqlFiles} migrations applied from the image layout`)

  // The compiled API and worker start with compose's environment and stop cleanly on SIGTERM.
  const environment = await createTestEnvironment(t)
  for (const [name, ready] of [['api', /Server listening at/], ['worker', /worker started/]] as const) {
    const words = commandWords(compose.services[name]?.command ?? [])
    const result = await startAndStop(t, words.slice(1), app, localEnvironment(compose, name, environment), ready)
    t.ok(result.started, `compiled ${name} starts: ${result.started ? '' : result.output.slice(-1500)}`)
    t.equal(result.code, 0, `compiled ${name} exits 0 on SIGTERM`)
  }
})

t.test('the compose topology runs natively with the environment compose sets', async (t) => {
  const compose = readCompose({})
  const environment = await createTestEnvironment(t)
  await startProcess(t, 'migrate', localEnvironment(compose, 'migrate', environment))
  const api = await startProcess(t, 'api', localEnvironment(compose, 'api', environment))
  const workers: ServiceProcess[] = []
  const replicas = Number(compose.services.worker?.deploy?.replicas)
  t.equal(replicas, 2)
  for (let i = 0; i < replicas; i++) workers.push(await startProcess(t, 'worker', localEnvironment(compose, 'worker', environment)))

  // Compose's own health checks, run as the containers would, against these processes.
  const apiPort = new URL(api.url).port
  t.equal(await runHealthCheck(compose, 'api', { PORT: apiPort }), 0, 'api health check passes')
  for (const [i, worker] of workers.entries()) {
    const line = worker.output.find((l) => l.includes('worker health listening'))
    const port = String((JSON.parse(line ?? '{}') as { port?: number }).port)
    t.equal(await runHealthCheck(compose, 'worker', { WORKER_HEALTH_PORT: port }), 0, `worker ${i + 1} health check passes (port ${port})`)
  }
  t.equal(await runHealthCheck(compose, 'api', { PORT: String(await freePort()) }), 1, 'the health check fails when nothing answers')

  const pool = new Pool(api.url, { connections: 20 })
  t.teardown(async () => { await pool.close() })
  const created = await pool.request({ method: 'POST', path: '/ticket_options', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'compose', allocation: 120 }) })
  const option = await created.body.json() as { id: string }
  t.equal(created.statusCode, 201)
  const statuses: Record<number, number> = {}
  let next = 0
  await Promise.all(Array.from({ length: 20 }, async () => {
    while (next < 200) {
      next++
      const res = await pool.request({ method: 'POST', path: `/ticket_options/${option.id}/purchases`, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ quantity: 1, user_id: USER_ID }) })
      await res.body.dump()
      statuses[res.statusCode] = (statuses[res.statusCode] ?? 0) + 1
    }
  }))
  t.same(statuses, { 201: 120, 409: 80 }, 'exactly 120 sold and 80 refused')
  t.same(await unbalancedOptions(environment.sql), [], 'invariant 1 holds')
  const left = await pool.request({ method: 'GET', path: `/ticket_options/${option.id}` })
  t.equal((await left.body.json() as { allocation: number }).allocation, 0)
  t.comment(`compose topology: 1 api + ${workers.length} workers, statuses ${JSON.stringify(statuses)}`)
})
