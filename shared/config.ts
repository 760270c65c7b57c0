/**
 * The one place that reads `process.env`. Every variable is validated once at
 * start-up into a frozen, typed object that is passed to the API and the worker.
 * A wrong value stops the process with a message naming the variable.
 *
 * Keep in sync with `.env.example` and the Configuration section of README.md.
 */
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { existsSync } from 'node:fs'
import { isIP } from 'node:net'
import path from 'node:path'
import { redactUrl } from './redact-url'

const Port = (def: string) => Type.String({ pattern: '^[0-9]{1,5}$', default: def })
const Int = (def: string) => Type.String({ pattern: '^[0-9]{1,10}$', default: def })
const Bool = (def: 'true' | 'false') => Type.Union([Type.Literal('true'), Type.Literal('false')], { default: def })

/** The environment as strings, before conversion. Defaults work on a developer machine. */
export const EnvSchema = Type.Object({
  /** HTTP port of the API. */
  PORT: Port('3000'),
  /** Interface the API and the worker's health server listen on; compose sets 0.0.0.0. */
  HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  /**
   * PostgreSQL connection string; the database is created by `npm run migrate` when missing.
   * Unset: an embedded PostgreSQL with its data in EMBEDDED_POSTGRES_DIR (API.md "Where it runs").
   */
  DATABASE_URL: Type.Optional(Type.String({ pattern: '^postgres(ql)?://' })),
  /** Port of the embedded PostgreSQL (used only without DATABASE_URL); not 5432, so it never meets a system server. */
  EMBEDDED_POSTGRES_PORT: Port('54329'),
  /** Data folder of the embedded PostgreSQL, relative to the checkout unless absolute. */
  EMBEDDED_POSTGRES_DIR: Type.String({ minLength: 1, default: '.data/postgres' }),
  /** Started as root, the OS user the embedded PostgreSQL runs as (it refuses root); created when missing. */
  EMBEDDED_POSTGRES_OS_USER: Type.String({ pattern: '^[a-z_][a-z0-9_-]{0,31}$', default: 'postgres' }),
  /** Connections per process in the PostgreSQL pool. */
  DATABASE_POOL_SIZE: Int('10'),
  /** Redis connection string: set, the queues run on Redis (unless QUEUE_BACKEND says otherwise). */
  REDIS_URL: Type.Optional(Type.String({ pattern: '^rediss?://' })),
  /** A Redis Cluster, as seed nodes `host:port,host:port,…` (any of its nodes; the rest are discovered). Instead of REDIS_URL. */
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ minLength: 1 })),
  /** Where the queues live: `redis` or `postgres`. Unset: Redis when REDIS_URL or REDIS_CLUSTER_NODES is set, PostgreSQL otherwise. */
  QUEUE_BACKEND: Type.Optional(Type.Union([Type.Literal('redis'), Type.Literal('postgres')])),
  /** Prefix of every Redis key this service writes (BullMQ queues, registry, channels). No `:`. */
  QUEUE_PREFIX: Type.String({ pattern: '^[A-Za-z0-9_.{}-]{1,64}$', default: 'tickets' }),
  /** pino level. */
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), { default: 'info' }),
  /** How long the API waits for a purchase's outcome before answering 202 (ms). */
  PURCHASE_WAIT_MS: Int('5000'),
  /**
   * Whether an API applies the requests of an option with nobody in line itself, under the
   * option's short lease, instead of queueing them (the direct path; Redis queues only).
   */
  DIRECT_PURCHASES: Bool('true'),
  /**
   * How long an API's lease on an option lasts (ms): a worker waits at most this long for an
   * API that died mid-batch; an API that has not locked the option's row within half of it
   * queues the batch instead.
   */
  DIRECT_LEASE_MS: Int('4000'),
  /** Largest number of queued purchases one transaction applies (1 turns batching off). */
  WORKER_BATCH_SIZE: Int('100'),
  /** A worker lets an option's queue go after this long without purchases (ms). */
  WORKER_QUEUE_IDLE_MS: Int('60000'),
  /** How often a worker rescans the registry of active option queues (ms). */
  WORKER_RESCAN_MS: Int('2000'),
  /** How long a worker keeps retrying a purchase while PostgreSQL is unreachable before handing it back to the queue (ms). */
  WORKER_DB_RETRY_MS: Int('30000'),
  /** HTTP port of the worker's /health/live, /health/ready and /metrics; 0 picks a free port (logged). */
  WORKER_HEALTH_PORT: Port('3001'),
  /** Whether `npm start` style logs are pretty-printed; by default only when stdout is a terminal. */
  LOG_PRETTY: Type.Optional(Bool('false')),
  /** Queue dashboard at /admin/queues: closed (404) unless both are set; then HTTP basic auth. No `:` in the user. */
  DASHBOARD_USER: Type.Optional(Type.String({ pattern: '^[^:]{1,200}$' })),
  /** Checked in dashboardCredentials, never echoed in an error message. */
  DASHBOARD_PASSWORD: Type.Optional(Type.String()),
  /** How long an Idempotency-Key is remembered (hours); an expired key counts as new. */
  IDEMPOTENCY_KEY_TTL_HOURS: Int('24'),
  /** Most purchases that may wait in one option's queue; beyond it the API answers 503 QUEUE_FULL. */
  QUEUE_MAX_WAITING: Int('10000'),
  /** Largest request body the API reads (bytes); a larger one is a 413. */
  BODY_LIMIT_BYTES: Int('16384'),
  /** Longest a request may take to arrive and be answered (ms); must exceed PURCHASE_WAIT_MS. Default: PURCHASE_WAIT_MS + 10000. */
  REQUEST_TIMEOUT_MS: Type.Optional(Type.String({ pattern: '^[0-9]{1,10}$' })),
  /** Purchase requests per client IP and minute, per API process; 0 turns the limit off. */
  RATE_LIMIT_PURCHASES_PER_MINUTE: Int('0'),
  /** Longest a request body may take to arrive once its headers have (ms); a slower one is a 408 and its connection is closed. */
  BODY_TIMEOUT_MS: Int('10000'),
  /**
   * Which proxies in front of the API to trust for the client address (X-Forwarded-For), so the
   * rate limit counts clients, not the proxy: `false` (default), `true` (any), a hop count, or
   * comma-separated addresses/CIDRs such as `10.0.0.0/8,127.0.0.1`.
   */
  TRUST_PROXY: Type.String({ pattern: '^[0-9A-Za-z.:/, ]{1,1000}$', default: 'false' }),
  /** How often a worker expires holds past their time (ms); a hold's tickets are back within this plus a transaction. */
  HOLD_SWEEP_MS: Int('1000'),
  /** How often the API checks the ledger of recently active options (ms); an imbalance is logged and counted in /metrics. */
  RECONCILE_INTERVAL_MS: Int('30000'),
  /** Serves examples/waiting-room.html at /examples/waiting-room. */
  EXAMPLES: Bool('false'),
})

/** Settings that no longer exist, and what to do instead: a process started with one stops and says so. */
const OBSOLETE: Record<string, string> = {
  MAX_TICKETS_PER_PURCHASE: 'a purchase now costs the same whatever its quantity, so there is no service-wide cap; set max_per_purchase on the options that need one (API.md "Limits")',
}
export type Env = Static<typeof EnvSchema>

export interface Config {
  readonly port: number
  readonly host: string
  /** the PostgreSQL to use: DATABASE_URL, or the embedded server's */
  readonly databaseUrl: string
  /** the embedded PostgreSQL to run or join (no DATABASE_URL); null when DATABASE_URL is set */
  readonly embeddedPostgres: EmbeddedPostgresSettings | null
  readonly databasePoolSize: number
  /** where the queues live (shared/queues/queue-backend.ts is the only reader) */
  readonly queueBackend: 'redis' | 'postgres'
  /** REDIS_URL, or the local default when QUEUE_BACKEND=redis names none */
  readonly redisUrl: string
  /** REDIS_CLUSTER_NODES: the seed nodes of a Redis Cluster, used instead of redisUrl; null when not set */
  readonly redisClusterNodes: readonly RedisNode[] | null
  readonly queuePrefix: string
  readonly logLevel: string
  readonly logPretty: boolean
  readonly purchaseWaitMs: number
  /** the direct path (api/purchasing/direct-sales.ts); on only where the queue backend supports it */
  readonly directPurchases: boolean
  readonly directLeaseMs: number
  readonly workerBatchSize: number
  readonly workerQueueIdleMs: number
  readonly workerRescanMs: number
  readonly workerDbRetryMs: number
  readonly workerHealthPort: number
  /** Basic-auth credentials of the queue dashboard; null keeps it closed. */
  readonly dashboard: DashboardCredentials | null
  readonly idempotencyKeyTtlHours: number
  readonly queueMaxWaiting: number
  readonly bodyLimitBytes: number
  /** Fastify requestTimeout and connectionTimeout; always longer than purchaseWaitMs */
  readonly requestTimeoutMs: number
  /** 0 = off */
  readonly rateLimitPurchasesPerMinute: number
  readonly bodyTimeoutMs: number
  /** Fastify's trustProxy */
  readonly trustProxy: TrustProxy
  readonly holdSweepMs: number
  readonly reconcileIntervalMs: number
  /** serve the example pages (examples/) */
  readonly examples: boolean
}

export interface RedisNode {
  readonly host: string
  readonly port: number
}

export interface EmbeddedPostgresSettings {
  /** absolute path of the data folder */
  readonly dataDir: string
  readonly port: number
  /** who runs it when this process is root */
  readonly osUser: string
}

/** Fastify's `trustProxy`: trust none, all, this many hops, or these addresses and ranges. */
export type TrustProxy = boolean | number | string[]

export interface DashboardCredentials {
  readonly user: string
  readonly password: string
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

function intIn (env: Env, name: keyof Env, min: number, max: number): number {
  const value = Number(env[name])
  if (!Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max}, got ${JSON.stringify(env[name])}`)
  }
  return value
}

/** Shortest dashboard password accepted: the dashboard shows every purchase's data. */
export const DASHBOARD_PASSWORD_MIN_LENGTH = 12

/** Both dashboard variables or neither; the password's value never appears in a message. */
function dashboardCredentials (env: Env): DashboardCredentials | null {
  const { DASHBOARD_USER: user, DASHBOARD_PASSWORD: password } = env
  if (user === undefined && password === undefined) return null
  if (user === undefined) throw new ConfigError('DASHBOARD_USER must be set when DASHBOARD_PASSWORD is (both or neither)')
  if (password === undefined) throw new ConfigError('DASHBOARD_PASSWORD must be set when DASHBOARD_USER is (both or neither)')
  if (password.length < DASHBOARD_PASSWORD_MIN_LENGTH || password.length > 200) {
    throw new ConfigError(`DASHBOARD_PASSWORD must be ${DASHBOARD_PASSWORD_MIN_LENGTH} to 200 characters long, got ${password.length}`)
  }
  return Object.freeze({ user, password })
}

/** `host:port,host:port,…`, every port 1 to 65535; exclusive with REDIS_URL (which one would be meant?). */
function redisClusterNodes (env: Env): readonly RedisNode[] | null {
  const raw = env.REDIS_CLUSTER_NODES
  if (raw === undefined) return null
  if (env.REDIS_URL !== undefined) throw new ConfigError('REDIS_CLUSTER_NODES and REDIS_URL are both set: set REDIS_URL for one Redis server, or REDIS_CLUSTER_NODES for a Redis Cluster')
  const nodes = raw.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').map((entry) => {
    const m = /^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):([0-9]{1,5})$/.exec(entry)
    const port = Number(m?.[2])
    if (m === null || port < 1 || port > 65535) throw new ConfigError(`REDIS_CLUSTER_NODES must be host:port pairs separated by commas, got ${JSON.stringify(entry)} in ${JSON.stringify(raw)}`)
    return Object.freeze({ host: (m[1] as string).replace(/^\[|\]$/g, ''), port })
  })
  if (nodes.length === 0) throw new ConfigError(`REDIS_CLUSTER_NODES names no node: ${JSON.stringify(raw)}`)
  return Object.freeze(nodes)
}

/** Margin between the purchase wait and the request timeout: the fallback read of PostgreSQL after a wait. */
export const REQUEST_TIMEOUT_MARGIN_MS = 1000

/**
 * A request that outlives REQUEST_TIMEOUT_MS is cut off, so it must leave a
 * purchase its whole wait plus the fallback read; unset, it follows PURCHASE_WAIT_MS.
 */
function requestTimeout (env: Env): number {
  const waitMs = intIn(env, 'PURCHASE_WAIT_MS', 0, 600_000)
  if (env.REQUEST_TIMEOUT_MS === undefined) return waitMs + 10_000
  const timeoutMs = intIn(env, 'REQUEST_TIMEOUT_MS', 1000, 3_600_000)
  if (timeoutMs < waitMs + REQUEST_TIMEOUT_MARGIN_MS) {
    throw new ConfigError(`REQUEST_TIMEOUT_MS must be at least PURCHASE_WAIT_MS + ${REQUEST_TIMEOUT_MARGIN_MS} (${waitMs + REQUEST_TIMEOUT_MARGIN_MS}), got ${timeoutMs}`)
  }
  return timeoutMs
}

const PROXY_ADDRESS = /^([0-9.]+|[0-9A-Fa-f:.]+)(\/[0-9]{1,3})?$/

function trustProxy (env: Env): TrustProxy {
  const raw = env.TRUST_PROXY.trim()
  if (raw === 'false') return false
  if (raw === 'true') return true
  if (/^[0-9]+$/.test(raw)) return intIn(env, 'TRUST_PROXY', 1, 100)
  const addresses = raw.split(',').map((a) => a.trim()).filter((a) => a !== '')
  const bad = addresses.find((a) => !PROXY_ADDRESS.test(a) || isIP(a.split('/')[0] ?? '') === 0)
  if (bad !== undefined || addresses.length === 0) {
    throw new ConfigError(`TRUST_PROXY must be true, false, a hop count or comma-separated IP addresses/CIDRs, got ${JSON.stringify(env.TRUST_PROXY)}`)
  }
  return addresses
}

/** A bad value as an error message shows it: never a password (stderr ends up in log collectors). */
function shownValue (name: string, raw: string | undefined): string {
  if (raw === undefined) return 'undefined'
  if (name === 'DASHBOARD_PASSWORD') return '(hidden)'
  return JSON.stringify(name.endsWith('_URL') ? redactUrl(raw) : raw)
}

/** Where QUEUE_BACKEND=redis looks when REDIS_URL names no server. */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379'

/** The embedded server's database: its superuser, on loopback only, with trust auth (initdb in shared/embedded-postgres). */
export function embeddedDatabaseUrl (embedded: EmbeddedPostgresSettings): string {
  return `postgres://postgres@127.0.0.1:${embedded.port}/tickets`
}

/** The checkout: the nearest folder above this file with a package.json (from source and from dist/). */
function projectRoot (): string {
  let dir = __dirname
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir)
  return dir
}

/** Reads and validates the environment; throws a ConfigError naming the first bad variable. */
export function loadConfig (source: NodeJS.ProcessEnv = process.env): Config {
  for (const [name, instead] of Object.entries(OBSOLETE)) {
    if (source[name] !== undefined && source[name] !== '') throw new ConfigError(`${name} is no longer used: ${instead}`)
  }
  const known: Record<string, string> = {}
  for (const key of Object.keys(EnvSchema.properties)) {
    const raw = source[key]
    // An empty variable (`FOO=` in compose) means "use the default".
    if (raw !== undefined && raw !== '') known[key] = raw
  }
  const env = Value.Default(EnvSchema, known) as Env
  const firstError = Value.Errors(EnvSchema, env).First()
  if (firstError !== undefined) {
    const name = firstError.path.replace(/^\//, '')
    throw new ConfigError(`${name} is invalid (${firstError.message}): ${shownValue(name, source[name])}`)
  }
  const embedded: EmbeddedPostgresSettings | null = env.DATABASE_URL === undefined
    ? { dataDir: path.resolve(projectRoot(), env.EMBEDDED_POSTGRES_DIR), port: intIn(env, 'EMBEDDED_POSTGRES_PORT', 1, 65535), osUser: env.EMBEDDED_POSTGRES_OS_USER }
    : null
  return Object.freeze({
    port: intIn(env, 'PORT', 0, 65535),
    host: env.HOST,
    databaseUrl: env.DATABASE_URL ?? embeddedDatabaseUrl(embedded as EmbeddedPostgresSettings),
    embeddedPostgres: embedded,
    databasePoolSize: intIn(env, 'DATABASE_POOL_SIZE', 1, 1000),
    queueBackend: env.QUEUE_BACKEND ?? (env.REDIS_URL === undefined && env.REDIS_CLUSTER_NODES === undefined ? 'postgres' : 'redis'),
    redisUrl: env.REDIS_URL ?? DEFAULT_REDIS_URL,
    redisClusterNodes: redisClusterNodes(env),
    queuePrefix: env.QUEUE_PREFIX,
    logLevel: env.LOG_LEVEL,
    logPretty: env.LOG_PRETTY === undefined ? process.stdout.isTTY === true : env.LOG_PRETTY === 'true',
    purchaseWaitMs: intIn(env, 'PURCHASE_WAIT_MS', 0, 600_000),
    directPurchases: env.DIRECT_PURCHASES === 'true',
    directLeaseMs: intIn(env, 'DIRECT_LEASE_MS', 100, 600_000),
    workerBatchSize: intIn(env, 'WORKER_BATCH_SIZE', 1, 10_000),
    workerQueueIdleMs: intIn(env, 'WORKER_QUEUE_IDLE_MS', 1000, 86_400_000),
    workerRescanMs: intIn(env, 'WORKER_RESCAN_MS', 100, 600_000),
    workerDbRetryMs: intIn(env, 'WORKER_DB_RETRY_MS', 0, 3_600_000),
    workerHealthPort: intIn(env, 'WORKER_HEALTH_PORT', 0, 65535),
    dashboard: dashboardCredentials(env),
    idempotencyKeyTtlHours: intIn(env, 'IDEMPOTENCY_KEY_TTL_HOURS', 1, 24 * 365),
    queueMaxWaiting: intIn(env, 'QUEUE_MAX_WAITING', 1, 100_000_000),
    bodyLimitBytes: intIn(env, 'BODY_LIMIT_BYTES', 1024, 10 * 1024 * 1024),
    requestTimeoutMs: requestTimeout(env),
    rateLimitPurchasesPerMinute: intIn(env, 'RATE_LIMIT_PURCHASES_PER_MINUTE', 0, 1_000_000),
    bodyTimeoutMs: intIn(env, 'BODY_TIMEOUT_MS', 100, 600_000),
    trustProxy: trustProxy(env),
    holdSweepMs: intIn(env, 'HOLD_SWEEP_MS', 100, 60_000),
    reconcileIntervalMs: intIn(env, 'RECONCILE_INTERVAL_MS', 1000, 86_400_000),
    examples: env.EXAMPLES === 'true',
  } satisfies Config)
}

/** For entry points: load the config or print the reason and exit 1. */
export function loadConfigOrExit (source: NodeJS.ProcessEnv = process.env): Config {
  try {
    return loadConfig(source)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`Configuration error: ${err.message}\n`)
      process.exit(1)
    }
    throw err
  }
}
