/**
 * Redis connections, to one server (REDIS_URL) or a Redis Cluster
 * (REDIS_CLUSTER_NODES, an ioredis Cluster). The API fails fast (a Redis
 * outage becomes a 503, no request hangs); the worker waits and reconnects
 * forever. On a cluster, pub/sub is sharded (SPUBLISH/SSUBSCRIBE): a message
 * goes to its channel's shard only, not to every node.
 * @see https://docs.bullmq.io/patterns/failing-fast-when-redis-is-down
 * @see https://docs.bullmq.io/guide/going-to-production
 * @see https://docs.bullmq.io/guide/redis-cluster
 */
import { Cluster, Redis, type ChainableCommander, type ClusterOptions, type RedisOptions } from 'ioredis'
import type { Logger } from 'pino'
import type { RedisNode } from './config'

/** A connection to one Redis server or to a Redis Cluster. */
export type RedisClient = Redis | Cluster

/** Where Redis is: one server's URL, or a cluster's seed nodes. */
export type RedisTarget = string | readonly RedisNode[]

export function isCluster (redis: RedisClient): redis is Cluster {
  return redis instanceof Cluster
}

/** Publishes on a channel: sharded on a cluster (only the channel's shard hears it), plain otherwise. */
/** Runs a pipeline and returns its replies in order; throws the first command's error, as one command would. */
export async function execPipeline (pipeline: ChainableCommander): Promise<unknown[]> {
  const replies = (await pipeline.exec()) ?? []
  const failed = replies.find(([err]) => err !== null)
  if (failed?.[0] != null) throw failed[0]
  return replies.map(([, value]) => value)
}

export async function publishMessage (redis: RedisClient, channel: string, message: string): Promise<void> {
  if (isCluster(redis)) await redis.spublish(channel, message)
  else await redis.publish(channel, message)
}

/** How long a cluster waits before retrying a command after MOVED/failover or CLUSTERDOWN (ms). */
const CLUSTER_RETRY_DELAY_MS = 200

function clusterOf (nodes: readonly RedisNode[], options: ClusterOptions, log: Logger, connectionName: string): Cluster {
  const cluster = new Cluster(nodes.map((n) => ({ host: n.host, port: n.port })), {
    clusterRetryStrategy: (times) => Math.min(times * 200, 2000),
    retryDelayOnFailover: CLUSTER_RETRY_DELAY_MS,
    retryDelayOnClusterDown: CLUSTER_RETRY_DELAY_MS,
    retryDelayOnTryAgain: CLUSTER_RETRY_DELAY_MS,
    // A failover moves slots: ask the cluster where they are now at least this often (ms).
    slotsRefreshInterval: 5000,
    slotsRefreshTimeout: 2000,
    ...options,
    redisOptions: { connectionName, ...options.redisOptions },
  })
  cluster.on('error', (err) => { log.warn({ err: { message: err.message, code: (err as { code?: string }).code } }, `redis cluster ${connectionName} error`) })
  cluster.on('+node', (node: Redis) => { log.debug({ node: `${node.options.host ?? '?'}:${node.options.port ?? '?'}` }, `redis cluster ${connectionName} node added`) })
  return cluster
}

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
export function createProducerConnection (target: RedisTarget, log: Logger, connectionName: string): RedisClient {
  if (typeof target !== 'string') {
    return clusterOf(target, {
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      redisOptions: { maxRetriesPerRequest: 1, connectTimeout: 1000, commandTimeout: 2000 },
    }, log, connectionName)
  }
  const redis = new Redis(target, {
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

/**
 * For workers and subscribers: BullMQ requires maxRetriesPerRequest null for
 * blocking commands. A cluster subscriber (`sharded`) keeps one connection per
 * master for SSUBSCRIBE.
 */
export function createWorkerConnection (target: RedisTarget, log: Logger, connectionName: string, readyWatchdogMs = READY_WATCHDOG_MS, sharded = false): RedisClient {
  if (typeof target !== 'string') {
    return clusterOf(target, { shardedSubscribers: sharded, redisOptions: { maxRetriesPerRequest: null } }, log, connectionName)
  }
  const redis = new Redis(target, {
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
export async function waitUntilReady (redis: RedisClient, timeoutMs: number): Promise<void> {
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
  return err instanceof Error && NEVER_SENT.some((start) => err.message.startsWith(start))
}

/** How ioredis refuses a command it did not write: one server, then a cluster not ready, or none of whose nodes answered. */
const NEVER_SENT = ["Stream isn't writeable", "Cluster isn't ready", 'None of startup nodes is available']
