/**
 * The stack a bench run measures, started natively as child processes through
 * their real entry points (the way compose runs them, configured only by
 * environment variables): our API(s) and worker(s), and beside them the
 * reference server (bench/reference/server.ts), each on its own database.
 * Everything started here is killed and removed in `close()`, even on failure.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { readdirSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import path from 'node:path'
import { Redis } from 'ioredis'
import pg from 'pg'
import { migrate } from '../migrations/migrate'
import { sleep } from '../test/support/wait'

export const ROOT = path.resolve(__dirname, '..')
export const PROFILE_DIR = path.join(ROOT, 'bench', 'results', 'profiles')
/** Where `buildForBench` compiles our processes and the reference (bench/tsconfig.build.json). */
export const BUILD_DIR = path.join(ROOT, 'bench', 'results', 'build')

/**
 * Compiles our API and worker and the reference with tsc, as the image does
 * (Dockerfile: `npm run build`, then `node dist/api/server.js`), so the bench
 * measures what compose runs, both sides alike. Through tsx, every function
 * created per request also paid esbuild's keep-names wrapper (`__name`), which
 * is not in what ships.
 */
export function buildForBench (): void {
  rmSync(BUILD_DIR, { recursive: true, force: true })
  execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'bench', 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' })
}

export interface BenchSettings {
  adminDatabaseUrl: string
  redisUrl: string
  /** where our queues live (BENCH_BACKEND) */
  queueBackend: 'redis' | 'postgres'
  apis: number
  workers: number
  profile: boolean
  /** extra env for our API and worker processes */
  env: Record<string, string>
  /** run the TypeScript sources through tsx (as `npm start` does) instead of the build from `buildForBench` */
  tsx: boolean
}

export interface Child {
  name: string
  child: ChildProcess
  /** last lines of output, for failure reports */
  tail: string[]
  exited: Promise<number | null>
}

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => { resolve(port) })
    })
  })
}

/** VmRSS of a process in MiB, or null once it is gone. */
export function rssMiB (pid: number | undefined): number | null {
  if (pid === undefined) return null
  try {
    const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return match?.[1] === undefined ? null : Math.round(Number(match[1]) / 102.4) / 10
  } catch {
    return null
  }
}

function databaseUrlFor (admin: string, name: string): string {
  const url = new URL(admin)
  url.pathname = `/${name}`
  return url.toString()
}

export class Stack {
  readonly suffix = randomBytes(5).toString('hex')
  readonly prefix = `bench-${this.suffix}`
  readonly oursDb = `tickets_bench_${this.suffix}`
  readonly refDb = `tickets_bench_${this.suffix}_ref`
  readonly oursUrl: string
  readonly refUrl: string
  readonly oursSql: pg.Pool
  readonly refSql: pg.Pool
  private readonly children = new Set<Child>()
  apis: Array<Child & { url: string }> = []
  workers: Child[] = []
  reference: (Child & { url: string }) | undefined
  private createdDbs: string[] = []
  /** Redis prefixes of APIs started from another build (startApiFrom), cleaned up with the bench's own. */
  private readonly extraPrefixes: string[] = []
  /** a plain connection to the bench's Redis (registry checks, INFO, cleanup) */
  redis: Redis | undefined

  constructor (readonly settings: BenchSettings) {
    this.oursUrl = databaseUrlFor(settings.adminDatabaseUrl, this.oursDb)
    this.refUrl = databaseUrlFor(settings.adminDatabaseUrl, this.refDb)
    this.oursSql = new pg.Pool({ connectionString: this.oursUrl, max: 2 })
    this.refSql = new pg.Pool({ connectionString: this.refUrl, max: 2 })
    this.oursSql.on('error', () => {})
    this.refSql.on('error', () => {})
  }

  /** Creates and migrates both databases, then starts everything. */
  async start (): Promise<void> {
    const admin = new pg.Client({ connectionString: this.settings.adminDatabaseUrl })
    await admin.connect()
    try {
      for (const db of [this.oursDb, this.refDb]) {
        await admin.query(`create database ${db}`)
        this.createdDbs.push(db)
      }
    } finally {
      await admin.end()
    }
    await migrate(this.oursUrl)
    await migrate(this.refUrl)
    this.redis = new Redis(this.settings.redisUrl, { maxRetriesPerRequest: null })

    for (let i = 0; i < this.settings.apis; i++) this.apis.push(await this.startApi(i))
    for (let i = 0; i < this.settings.workers; i++) this.workers.push(await this.startWorker(i, {}))
    this.reference = await this.startReference()
  }

  private ourEnv (extra: Record<string, string>): Record<string, string> {
    return {
      DATABASE_URL: this.oursUrl,
      REDIS_URL: this.settings.redisUrl,
      QUEUE_BACKEND: this.settings.queueBackend,
      QUEUE_PREFIX: this.prefix,
      LOG_LEVEL: 'warn',
      LOG_PRETTY: 'false',
      HOST: '127.0.0.1',
      // Several workers (and a restarted one) must not fight over the health port.
      WORKER_HEALTH_PORT: '0',
      ...this.settings.env,
      ...extra,
    }
  }

  /** Starts `entry` (a .ts path from the checkout): its build, or the source through tsx (settings.tsx). */
  private spawn (name: string, entry: string, env: Record<string, string>, profile: boolean): Child {
    const args = this.settings.tsx ? ['--import', 'tsx'] : []
    // One folder per process: with tsx, Node also profiles the loader's worker
    // thread, and the main thread's file is the biggest one in the folder.
    if (profile) args.push('--cpu-prof', `--cpu-prof-dir=${this.profileDir(name)}`)
    const script = this.settings.tsx ? entry : path.join(BUILD_DIR, entry.replace(/\.ts$/, '.js'))
    return this.spawnNode(name, [...args, script], env)
  }

  private spawnNode (name: string, args: string[], env: Record<string, string>): Child {
    const child = spawn(process.execPath, args, {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const tail: string[] = []
    for (const stream of [child.stdout, child.stderr]) {
      stream?.setEncoding('utf8')
      stream?.on('data', (chunk: string) => {
        for (const line of chunk.split('\n')) if (line !== '') tail.push(line)
        if (tail.length > 200) tail.splice(0, tail.length - 200)
      })
    }
    const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
    const entryChild: Child = { name, child, tail, exited }
    this.children.add(entryChild)
    void exited.then(() => { this.children.delete(entryChild) })
    return entryChild
  }

  profileDir (name: string): string {
    return path.join(PROFILE_DIR, `${this.suffix}-${name}`)
  }

  /** Waits until GET url answers at all (any status), or the process exits. */
  private async waitForHttp (proc: Child, url: string, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    let exited = false
    void proc.exited.then(() => { exited = true })
    while (Date.now() < deadline) {
      if (exited) throw new Error(`${proc.name} exited before it was ready:\n${proc.tail.join('\n')}`)
      try {
        const { request } = await import('undici')
        const res = await request(`${url}/ticket_options/00000000-0000-4000-8000-000000000000`)
        await res.body.dump()
        if (res.statusCode === 404) return
      } catch {}
      await sleep(100)
    }
    throw new Error(`${proc.name} not ready after ${timeoutMs} ms:\n${proc.tail.join('\n')}`)
  }

  private async startApi (i: number, extra: Record<string, string> = {}): Promise<Child & { url: string }> {
    const port = await freePort()
    const proc = this.spawn(`api${i}`, 'api/server.ts', this.ourEnv({ ...extra, PORT: String(port) }), this.settings.profile)
    const url = `http://127.0.0.1:${port}`
    await this.waitForHttp(proc, url)
    return { ...proc, url }
  }

  /**
   * Starts an API from another build of this project (`script`: its
   * api/server.js) on our database, under a Redis prefix of its own, so it
   * shares no lease, line or channel with ours: two builds side by side
   * (bench/side-by-side.ts). Its keys go with the bench's.
   */
  async startApiFrom (name: string, script: string): Promise<Child & { url: string }> {
    const prefix = `${this.prefix}-${name}`
    this.extraPrefixes.push(prefix)
    const port = await freePort()
    const proc = this.spawnNode(name, [script], this.ourEnv({ QUEUE_PREFIX: prefix, PORT: String(port) }))
    const url = `http://127.0.0.1:${port}`
    await this.waitForHttp(proc, url)
    return { ...proc, url }
  }

  /** Starts a worker; it is ready once it listens for wake-ups (PUBSUB NUMSUB, or its LISTEN connection, grows). */
  async startWorker (i: number, extra: Record<string, string>): Promise<Child> {
    const channel = `${this.prefix}:queue-wakeup`
    const before = await this.subscribers(channel)
    const proc = this.spawn(`worker${i}`, 'worker/main.ts', this.ourEnv(extra), this.settings.profile)
    const deadline = Date.now() + 30_000
    let exited = false
    void proc.exited.then(() => { exited = true })
    while (await this.subscribers(channel) <= before) {
      if (exited) throw new Error(`worker exited before it was ready:\n${proc.tail.join('\n')}`)
      if (Date.now() > deadline) throw new Error(`worker not ready after 30 s:\n${proc.tail.join('\n')}`)
      await sleep(100)
    }
    return proc
  }

  private async subscribers (channel: string): Promise<number> {
    if (this.settings.queueBackend === 'postgres') {
      // The worker's LISTEN connection (shared/queues/postgres-queue-backend.ts names it), once it has listened.
      const { rows } = await this.oursSql.query("select count(*)::int as n from pg_stat_activity where application_name = $1 and query ilike 'LISTEN%'", [`${this.prefix}-worker-listener`])
      return rows[0].n as number
    }
    const reply = await this.redis?.pubsub('NUMSUB', channel) as [string, number] | undefined
    return Number(reply?.[1] ?? 0)
  }

  /** Replaces every API and worker of ours with one started with `extra` env (e.g. OTEL_* for tracing); returns the APIs' new URLs. */
  async restartOurs (apiExtra: Record<string, string>, workerExtra: Record<string, string>): Promise<string[]> {
    return await this.resize(this.settings.apis, this.settings.workers, apiExtra, workerExtra)
  }

  /** Replaces ours with `apis` APIs and `workers` workers (the replica sweep); returns the APIs' URLs. */
  async resize (apis: number, workers: number, apiExtra: Record<string, string>, workerExtra: Record<string, string>): Promise<string[]> {
    for (const p of [...this.apis, ...this.workers]) await this.stop(p)
    this.apis = []
    this.workers = []
    for (let i = 0; i < apis; i++) this.apis.push(await this.startApi(i, apiExtra))
    for (let i = 0; i < workers; i++) this.workers.push(await this.startWorker(i, workerExtra))
    return this.apis.map((a) => a.url)
  }

  /** Replaces every worker with one started with `extra` env (e.g. WORKER_BATCH_SIZE=1). */
  async restartWorkers (extra: Record<string, string>): Promise<void> {
    const old = this.workers
    this.workers = []
    for (const w of old) await this.stop(w)
    for (let i = 0; i < this.settings.workers; i++) this.workers.push(await this.startWorker(i, extra))
  }

  private async startReference (): Promise<Child & { url: string }> {
    const port = await freePort()
    const proc = this.spawn('reference', 'bench/reference/server.ts', {
      DATABASE_URL: this.refUrl,
      PORT: String(port),
      REFERENCE_POOL_SIZE: process.env.BENCH_REFERENCE_POOL_SIZE ?? '20',
    }, this.settings.profile)
    const url = `http://127.0.0.1:${port}`
    await this.waitForHttp(proc, url)
    return { ...proc, url }
  }

  /** SIGTERM (graceful: lets --cpu-prof write its file), then SIGKILL after a while. */
  async stop (proc: Child, graceMs = 15_000): Promise<void> {
    if (proc.child.exitCode !== null || proc.child.signalCode !== null) return
    proc.child.kill('SIGTERM')
    const timer = setTimeout(() => { proc.child.kill('SIGKILL') }, graceMs)
    await proc.exited
    clearTimeout(timer)
  }

  /** Kills every child at once (SIGINT path), no waiting. */
  killAllNow (): void {
    for (const c of this.children) c.child.kill('SIGKILL')
  }

  async close (): Promise<void> {
    // Each step on its own, so a failing one never leaves databases or keys behind.
    await Promise.all([...this.children].map(async (c) => { await this.stop(c) })).catch(() => { this.killAllNow() })
    await this.oursSql.end().catch(() => {})
    await this.refSql.end().catch(() => {})
    await this.deleteKeys().catch((err: unknown) => { process.stderr.write(`could not delete Redis keys ${this.prefix}:*: ${String(err)}\n`) })
    await this.dropDatabases().catch((err: unknown) => { process.stderr.write(`could not drop ${this.createdDbs.join(', ')}: ${String(err)}\n`) })
  }

  private async deleteKeys (): Promise<void> {
    if (this.redis !== undefined) {
      for (const prefix of [this.prefix, ...this.extraPrefixes]) {
        let cursor = '0'
        do {
          const [next, keys] = await this.redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
          cursor = next
          if (keys.length > 0) await this.redis.unlink(...keys)
        } while (cursor !== '0')
      }
      this.redis.disconnect()
    }
  }

  private async dropDatabases (): Promise<void> {
    if (this.createdDbs.length > 0) {
      const admin = new pg.Client({ connectionString: this.settings.adminDatabaseUrl })
      await admin.connect()
      for (const db of this.createdDbs) await admin.query(`drop database if exists ${db} with (force)`)
      await admin.end()
      this.createdDbs = []
    }
  }
}

/** CPU time a process has used so far in user and in system mode, in ms; zeros once it is gone. */
export function cpuTimes (pid: number | undefined): { user: number, system: number } {
  if (pid === undefined) return { user: 0, system: 0 }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // Fields after the command name (which may hold spaces) start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { user: Number(fields[11]) * 10, system: Number(fields[12]) * 10 } // utime, stime in clock ticks of 10 ms
  } catch {
    return { user: 0, system: 0 }
  }
}

/**
 * CPU time a process has used so far, in ms; 0 once it is gone. Summed over
 * its threads' run time in /proc/<pid>/task/<tid>/schedstat, in nanoseconds:
 * `cpuTimes`' 10 ms ticks moved a single buyer's figures by about 2 % (a block
 * of 50 purchases is 15–20 ms of an API's CPU). Ticks only where the kernel
 * keeps no schedstat.
 */
export function cpuMs (pid: number | undefined): number {
  if (pid === undefined) return 0
  let tids: string[]
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return 0
  }
  let ns = 0
  for (const tid of tids) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0])
    } catch (err) {
      // A thread that ended meanwhile counts nothing; no schedstat at all: ticks.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        const { user, system } = cpuTimes(pid)
        return user + system
      }
    }
  }
  return ns / 1e6
}

/** Pids of redis-server processes (the shared Redis), for CPU accounting. */
export function redisPids (): number[] {
  const pids: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'redis-server') pids.push(Number(entry))
    } catch {}
  }
  return pids
}
