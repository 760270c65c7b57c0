/**
 * Redis connections. The API fails fast (a Redis outage becomes a 503, no
 * request hangs); the worker waits and reconnects forever.
 * @see https://docs.bullmq.io/patterns/failing-fast-when-redis-is-down
 * @see https://docs.bullmq.io/guide/going-to-production
 */
import { Redis, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'

const reconnect: RedisOptions['retryStrategy'] = (times) => Math.min(times * 200, 2000)

/** Longest a connection may sit between TCP connect and ready before it is started over. */
export const READY_WATCHDOG_MS = 5000

/**
 * ioredis has no time limit between `connect` (TCP up) and `ready` (its INFO
 * ready check answered, subscriptions restored). A server that accepts but
 * does not answer (a restarting container behind Docker's port proxy, Redis
 * loading its AOF) can leave a connection there for good: seen in our Redis
 * restart test as an outcome subscriber stuck after its ready check, never
 * subscribed again. Past `timeoutMs` the connection is dropped and ioredis
 * reconnects through its own retry path.
 */
export function reconnectWhenStuck (redis: Redis, log: Logger, connectionName: string, timeoutMs = READY_WATCHDOG_MS): void {
  let timer: NodeJS.Timeout | undefined
  const disarm = (): void => { clearTimeout(timer); timer = undefined }
  redis.on('connect', () => {
    disarm()
    timer = setTimeout(() => {
      timer = undefined
      if (redis.status === 'ready' || redis.status === 'end') return
      log.warn({ connectionName, status: redis.status, timeoutMs }, 'redis connection not ready in time, reconnecting')
      redis.disconnect(true)
    }, timeoutMs)
    timer.unref()
  })
  redis.on('ready', disarm)
  redis.on('close', disarm)
  redis.on('end', disarm)
}

/** For the API: commands fail at once while disconnected instead of queueing. */
export function createProducerConnection (redisUrl: string, log: Logger, connectionName: string): Redis {
  const redis = new Redis(redisUrl, {
    connectionName,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 1000,
    commandTimeout: 2000,
    retryStrategy: reconnect,
    // Under load many requests add their job in the same event-loop turn;
    // this sends them in one write instead of one write each (bench: fewer
    // syscalls in the API and in Redis). Errors stay per command.
    enableAutoPipelining: true,
  })
  reconnectWhenStuck(redis, log, connectionName)
  redis.on('error', (err) => { log.warn({ err: { message: err.message, code: (err as { code?: string }).code } }, `redis ${connectionName} error`) })
  return redis
}

/** For workers and subscribers: BullMQ requires maxRetriesPerRequest null for blocking commands. */
export function createWorkerConnection (redisUrl: string, log: Logger, connectionName: string, readyWatchdogMs = READY_WATCHDOG_MS): Redis {
  const redis = new Redis(redisUrl, {
    connectionName,
    maxRetriesPerRequest: null,
    enableReadyCheck: true,
    retryStrategy: reconnect,
  })
  reconnectWhenStuck(redis, log, connectionName, readyWatchdogMs)
  redis.on('error', (err) => { log.warn({ err: { message: err.message, code: (err as { code?: string }).code } }, `redis ${connectionName} error`) })
  return redis
}

/** Resolves when the connection is ready, or rejects after `timeoutMs`. */
export async function waitUntilReady (redis: Redis, timeoutMs: number): Promise<void> {
  if (redis.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`Redis not ready after ${timeoutMs} ms`)) }, timeoutMs)
    const onReady = (): void => { cleanup(); resolve() }
    const cleanup = (): void => { clearTimeout(timer); redis.off('ready', onReady) }
    redis.on('ready', onReady)
  })
}

/**
 * True when a command failed before it was written to Redis (a fail-fast
 * connection refuses while disconnected). Any other failure is ambiguous:
 * Redis may have run the command and the reply been lost with the connection.
 */
export function commandNeverSent (err: unknown): boolean {
  return err instanceof Error && err.message.startsWith("Stream isn't writeable")
}
