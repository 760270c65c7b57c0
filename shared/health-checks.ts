/**
 * Readiness checks shared by the API and the worker: does PostgreSQL answer
 * `select 1`, does Redis answer PING (when the queues are on Redis). Each check gives up after a short
 * timeout, so a probe reports an outage within a second or two instead of
 * hanging along with the dependency, and nothing is cached, so readiness
 * recovers by itself as soon as the dependency answers again.
 * Keep in sync with API.md "Operator routes".
 */
import type { QueryConfig } from 'pg'
import type { RedisClient } from './redis'
import type { Db } from './db'

/** How long one check may take before the dependency counts as down (ms). */
export const HEALTH_CHECK_TIMEOUT_MS = 1000

export interface Readiness {
  postgres: boolean
  /** the queue store when it is not PostgreSQL itself; null when it is */
  queues: { name: string, up: boolean } | null
}

async function within<T> (promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error(`no answer within ${timeoutMs} ms`)) }, timeoutMs)
  })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export async function postgresAnswers (db: Db, timeoutMs = HEALTH_CHECK_TIMEOUT_MS): Promise<boolean> {
  // query_timeout makes pg give the client back as broken (the pool destroys
  // it) when a server hangs, so repeated probes cannot exhaust the pool.
  const query = { text: 'select 1', query_timeout: timeoutMs } as QueryConfig
  const answered = db.query(query)
  answered.catch(() => {}) // may reject after the race is lost
  try {
    await within(answered, timeoutMs)
    return true
  } catch {
    return false
  }
}

export async function redisAnswers (redis: RedisClient, timeoutMs = HEALTH_CHECK_TIMEOUT_MS): Promise<boolean> {
  // A worker connection keeps an offline queue: a PING sent while it is
  // reconnecting would wait for Redis instead of failing, so ask its state first.
  if (redis.status !== 'ready') return false
  const answered = redis.ping()
  answered.catch(() => {})
  try {
    return await within(answered, timeoutMs) === 'PONG'
  } catch {
    return false
  }
}

/** The queue backend's side of readiness (shared/queues/queue-backend.ts). */
export interface QueueStore {
  readonly storeName: string
  answers: (timeoutMs: number) => Promise<boolean>
}

/**
 * PostgreSQL, and the queue store when it is another one (Redis): only the
 * stores in use are asked. `checks` names each, for the readiness body.
 */
export async function checkReadiness (db: Db, queues: QueueStore, timeoutMs = HEALTH_CHECK_TIMEOUT_MS): Promise<Readiness> {
  const separate = queues.storeName !== 'PostgreSQL'
  const [postgres, queuesUp] = await Promise.all([postgresAnswers(db, timeoutMs), separate ? queues.answers(timeoutMs) : Promise.resolve(true)])
  return { postgres, queues: separate ? { name: queues.storeName, up: queuesUp } : null }
}

export function isReady (readiness: Readiness): boolean {
  return readiness.postgres && (readiness.queues?.up ?? true)
}

/** The body's `checks`: `{ postgres: 'ok' }`, plus `redis: 'ok'` when the queues are on Redis. */
export function readinessChecks (readiness: Readiness): { postgres: 'ok', redis?: 'ok' } {
  return readiness.queues === null ? { postgres: 'ok' } : { postgres: 'ok', redis: 'ok' }
}

/** Names what is down, for "<name> is unavailable": "PostgreSQL", "Redis" or "PostgreSQL (and Redis)". */
export function unavailableDependencies (readiness: Readiness): string {
  const queuesDown = readiness.queues !== null && !readiness.queues.up
  if (!readiness.postgres) return queuesDown ? `PostgreSQL (and ${readiness.queues?.name ?? ''})` : 'PostgreSQL'
  return readiness.queues?.name ?? 'PostgreSQL'
}
