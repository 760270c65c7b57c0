/**
 * Test isolation: every test file gets its own PostgreSQL database (migrated)
 * and its own Redis key prefix, both removed in teardown, so files run in
 * parallel without touching each other or a developer's data.
 * Connection strings come from TEST_DATABASE_URL / TEST_REDIS_URL, with this
 * machine's defaults.
 *
 * The queue backend is Redis unless the test asks for another
 * (`{ QUEUE_BACKEND: 'postgres' }`); `eachQueueBackend` runs a test on both.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { Redis } from 'ioredis'
import pino from 'pino'
import type { Test } from 'tap'
import { loadConfig, type Config } from '../../shared/config'
import { migrate } from '../../migrations/migrate'
import { openQueueBackend, type QueueBackend, type QueueBackendKind } from '../../shared/queues/queue-backend'

/** Both, unless TEST_QUEUE_BACKENDS narrows them (`redis` or `postgres`) while working on one. */
export const QUEUE_BACKENDS: readonly QueueBackendKind[] = (process.env.TEST_QUEUE_BACKENDS ?? 'redis,postgres')
  .split(',').map((s) => s.trim()).filter((s): s is QueueBackendKind => s === 'redis' || s === 'postgres')

/** Runs `fn` once per queue backend, as subtests named after it; pass `{ QUEUE_BACKEND }` on to the environment. */
export function eachQueueBackend (t: Test, name: string, fn: (t: Test, env: { QUEUE_BACKEND: QueueBackendKind }) => Promise<void>): void {
  for (const backend of QUEUE_BACKENDS) void t.test(`${name} (queues on ${backend})`, async (t) => { await fn(t, { QUEUE_BACKEND: backend }) })
}
/**
 * For tests of the queue path: every request is queued, as on PostgreSQL
 * queues or whenever an option has a line. Without it an API applies the
 * requests of an option with nobody in line itself (the direct path,
 * api/purchasing/direct-sales.ts), so nothing would wait in a queue.
 */
export const QUEUED = { DIRECT_PURCHASES: 'false' } as const

export const ADMIN_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

/** The part of tap's Test that the helpers need. */
export interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface TestEnvironment {
  /** environment variables a spawned api/worker process needs */
  env: Record<string, string>
  config: Config
  databaseUrl: string
  redisUrl: string
  prefix: string
  /** a pool on the test database, for assertions in SQL */
  sql: pg.Pool
  /** a plain Redis connection, for assertions on keys */
  redis: Redis
  /** A queue backend of the test's own (closed in teardown), to look at its queues and registry. */
  openQueues: () => QueueBackend
}

export function randomSuffix (): string {
  return randomBytes(6).toString('hex')
}

function databaseUrlFor (name: string): string {
  const url = new URL(ADMIN_DATABASE_URL)
  url.pathname = `/${name}`
  return url.toString()
}

/** Deletes every key under `prefix:` (SCAN, never KEYS, so a shared Redis is not blocked). */
export async function deleteKeys (redis: Redis, prefix: string): Promise<number> {
  let deleted = 0
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
    cursor = next
    if (keys.length > 0) deleted += await redis.unlink(...keys)
  } while (cursor !== '0')
  return deleted
}

export async function createTestEnvironment (t: Teardown, overrides: Record<string, string> = {}): Promise<TestEnvironment> {
  const suffix = randomSuffix()
  const database = `tickets_test_${suffix}`
  const prefix = `test-${suffix}`
  const admin = new pg.Client({ connectionString: ADMIN_DATABASE_URL })
  await admin.connect()
  await admin.query(`create database ${database}`)
  await admin.end()
  const databaseUrl = databaseUrlFor(database)
  const redisUrl = TEST_REDIS_URL
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: null })
  const sql = new pg.Pool({ connectionString: databaseUrl, max: 4 })
  sql.on('error', () => {}) // a test that kills backends must not crash the runner

  t.teardown(async () => {
    await sql.end().catch(() => {})
    await deleteKeys(redis, prefix).catch(() => {})
    redis.disconnect()
    const cleaner = new pg.Client({ connectionString: ADMIN_DATABASE_URL })
    await cleaner.connect()
    await cleaner.query(`drop database if exists ${database} with (force)`)
    await cleaner.end()
  })

  await migrate(databaseUrl)
  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'warn',
    LOG_PRETTY: 'false',
    PORT: '0',
    // Workers of parallel test files must not fight over the default health port.
    WORKER_HEALTH_PORT: '0',
    HOST: '127.0.0.1',
    ...overrides,
  }
  // A test on a Redis Cluster (its own, torn down with it) names no single server.
  if (overrides.REDIS_CLUSTER_NODES !== undefined) delete env.REDIS_URL
  const config = loadConfig(env)
  let queues: QueueBackend | undefined
  const openQueues = (): QueueBackend => {
    if (queues === undefined) {
      const opened = openQueueBackend(config, pino({ level: 'silent' }), 'worker')
      queues = opened
      t.teardown(async () => { await opened.close() })
    }
    return queues
  }
  return { env, config, databaseUrl, redisUrl, prefix, sql, redis, openQueues }
}

/** Invariant 1 of DESIGN.md, for one option or all: rows that do not balance. */
export async function unbalancedOptions (sql: pg.Pool): Promise<unknown[]> {
  const { rows } = await sql.query('select * from allocation_audit where not balanced')
  return rows
}
