/**
 * The queues on Redis (REDIS_URL): BullMQ's default backend. The registry of
 * active options is a sorted set, wake-ups and outcome messages are pub/sub
 * channels, and the line numbers are two counters in the option's hash slot
 * (shared/queues/queue-names.ts names every key).
 *
 * Connections: one shared non-blocking connection (queues, registry,
 * counters, publishing), one subscriber, and BullMQ's own blocking
 * connection per Worker. The API's shared connection fails fast; a worker's
 * waits and reconnects (shared/redis.ts).
 */
import { QueueKeys, Queue, Worker, type Processor } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from '../config'
import { lineMessageReader, publishApplied, publishApplying, type LineMessage } from '../purchases/purchase-outcomes'
import { commandNeverSent, createProducerConnection, execPipeline, createWorkerConnection, isCluster, waitUntilReady, type RedisClient, type RedisTarget } from '../redis'
import { redisAnswers } from '../health-checks'
import { queueTelemetry } from '../telemetry/purchase-spans'
import type { QueueBackend, QueueBackendRole, QueueCounts, QueueSettings, WorkerSettings } from './queue-backend-types'
import { activeOptionsKey, bundleMembersKey, lineAppliedKey, lineTicketKey, purchaseOutcomesChannel, purchaseQueueName, queueWakeupChannel } from './queue-names'
import { directLeases } from './direct-lease'
import { LineListeners } from './line-listeners'
import { listActiveOptions, releaseOption, touchOption } from './queue-registry'

/** How long an option's bundle index outlives its last bundle (s). */
const BUNDLE_INDEX_TTL_S = 24 * 3600

/** REDIS_CLUSTER_NODES when set, else REDIS_URL. */
function redisTargetOf (config: Config): RedisTarget {
  return config.redisClusterNodes ?? config.redisUrl
}

export function openRedisQueueBackend (config: Config, log: Logger, role: QueueBackendRole): QueueBackend {
  const prefix = config.queuePrefix
  const target = redisTargetOf(config)
  const connection: RedisClient = role === 'api'
    ? createProducerConnection(target, log, `${prefix}-${role}`)
    : createWorkerConnection(target, log, `${prefix}-${role}`)
  const cluster = isCluster(connection)
  // Opened on first subscription: a process that only enqueues needs none.
  let subscriber: RedisClient | undefined
  const subscribed = new Map<string, (message: string) => void>()
  /** `onSubscribed`: after each subscription that went through, the first and every one after a reconnect (one server only). */
  const subscribe = async (channel: string, onMessage: (message: string) => void, onGap?: () => void, onSubscribed?: () => void): Promise<void> => {
    if (subscriber === undefined) {
      const s = createWorkerConnection(target, log, `${prefix}-${role}-subscriber`, undefined, cluster)
      // Sharded channels on a cluster: each message reaches its channel's shard only.
      s.on(cluster ? 'smessage' : 'message', (from: string, message: string) => { subscribed.get(from)?.(message) })
      s.on('close', () => { listeners?.lost() })
      subscriber = s
    }
    const s = subscriber
    subscribed.set(channel, onMessage)
    if (isCluster(s)) {
      // ioredis moves sharded subscriptions to a shard's new master by itself; messages meanwhile are lost.
      s.on('ready', () => { onGap?.() })
      s.on('+node', () => { onGap?.() })
      await s.ssubscribe(channel)
      return
    }
    // ioredis re-subscribes by itself after a reconnect, but only if the
    // connection it lost had subscribed; after a reconnect that failed midway
    // it may not know. Subscribing again on every ready is harmless. The gap is
    // told once subscribed ('ready' comes before), so what it looks up misses nothing.
    s.on('ready', () => {
      s.subscribe(channel).then(() => { onGap?.(); onSubscribed?.() }, (err: unknown) => { log.warn({ err, channel }, 'could not subscribe') })
    })
    await s.subscribe(channel)
    onSubscribed?.()
  }
  // Who else hears the outcome channel (one server only: a cluster's shard channel is not counted, so always published).
  let listeners: LineListeners | undefined
  /** This process's own listener of line messages, told in-process what nobody else would hear. */
  let hearHere: ((message: LineMessage) => void) | undefined
  const outcomesChannel = purchaseOutcomesChannel(prefix)
  const keys = new QueueKeys(prefix)
  const leases = directLeases(connection, prefix, keys)

  return {
    kind: 'redis',
    storeName: 'Redis',
    // An hour of completed jobs, at most 10,000 per queue (a sorted set: trimming is cheap).
    retention: { removeOnComplete: { age: 3600, count: 10_000 }, removeOnFail: { age: 7 * 24 * 3600 } },

    bundles: true,
    // The member index outlives no bundle by much: workers forget a bundle's members once
    // it is applied, and an index left by a worker that died then expires with its option's quiet.
    recordBundle: async (ticketOptionId, bundleJobId, memberIds) => {
      const key = bundleMembersKey(prefix, ticketOptionId)
      await execPipeline(connection.pipeline()
        .hset(key, Object.fromEntries(memberIds.map((id) => [id, bundleJobId])))
        .expire(key, BUNDLE_INDEX_TTL_S))
    },
    bundleOf: async (ticketOptionId, memberId) => await connection.hget(bundleMembersKey(prefix, ticketOptionId), memberId),
    forgetBundle: async (ticketOptionId, memberIds) => {
      if (memberIds.length > 0) await connection.hdel(bundleMembersKey(prefix, ticketOptionId), ...memberIds)
    },

    directPurchases: true,
    claimDirect: leases.claim,
    releaseDirect: leases.release,
    directLeaseMs: leases.msLeft,

    createQueue: (name: string, settings: QueueSettings = {}) => new Queue(name, { connection, prefix, telemetry: queueTelemetry(), ...settings }),
    createWorker: (name: string, processor: Processor, settings: WorkerSettings) => new Worker(name, processor, { connection, prefix, telemetry: queueTelemetry(), ...settings }),

    touchOption: async (ticketOptionId, now) => { await touchOption(connection, prefix, ticketOptionId, now) },
    listActiveOptions: async () => await listActiveOptions(connection, prefix),
    recentOptions: async (limit) => {
      const registry = activeOptionsKey(prefix)
      const [registered, ids] = await Promise.all([connection.zcard(registry), connection.zrevrange(registry, 0, limit - 1)])
      return { registered, ids }
    },
    releaseOption: async (ticketOptionId, lastUsedAt) => await releaseOption(connection, prefix, ticketOptionId, lastUsedAt),
    subscribeWakeups: async (onWakeup) => { await subscribe(queueWakeupChannel(prefix), onWakeup) },

    subscribeLineMessages: async (onMessage, onGap) => {
      const read = lineMessageReader(onMessage, log)
      if (cluster) {
        await subscribe(outcomesChannel, read, onGap)
        return
      }
      const heard = new LineListeners(async () => await countSubscribers(connection as Redis, outcomesChannel))
      listeners = heard
      hearHere = onMessage
      const sayListening = (): void => {
        connection.publish(outcomesChannel, heard.listeningMessage).catch((err: unknown) => { log.warn({ err }, 'could not say this process listens for outcomes') })
      }
      await subscribe(outcomesChannel, (raw) => { if (!heard.takeListening(raw)) read(raw) }, onGap, () => { heard.subscribed(); sayListening() })
    },
    // Pub/sub is not transactional: Redis hears of a batch once it has committed.
    recordApplied: async () => {},
    publishApplied: async (message) => {
      // Only an API's: it announces direct batches only, whose applied line the lease's release
      // advances, so only the news is left to tell. A worker's batch advances its line here.
      if (role === 'api' && listeners?.others === false && hearHere !== undefined && message.outcomes.length > 0) {
        hearHere({ type: 'applied', ...message })
        return
      }
      await publishApplied(connection, prefix, message)
    },
    publishApplying: async (ticketOptionId, applyingLine) => { await publishApplying(connection, prefix, ticketOptionId, applyingLine) },

    takeLineNumbers: leases.takeLine,
    markFenced: leases.markFenced,
    readLine: async (ticketOptionId) => {
      const [taken, applied] = await connection.mget(lineTicketKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId))
      return { taken: Number(taken ?? 0), applied: Number(applied ?? 0) }
    },

    // BullMQ on Redis pushes it where the next take looks first.
    handBack: async (job, token) => { await job.moveToWait(token) },
    waitingData: async (queue, limit) => (await queue.getJobs(['wait'], 0, limit - 1, true)).map((job) => job.data as unknown),
    // Requests, not jobs (a bundle is one job): the line numbers taken and not yet
    // applied, or the jobs waiting if more (a Redis that lost its counters). One round trip.
    waitingCount: async (queue, ticketOptionId) => {
      const [line, jobs] = await execPipeline(connection.pipeline()
        .mget(lineTicketKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId))
        .llen(keys.toKey(queue.name, 'wait')))
      const [taken, applied] = line as Array<string | null>
      return Math.max(Number(jobs), Number(taken ?? 0) - Number(applied ?? 0))
    },
    // moveToWait and the stalled-job check push the job back where the next take looks first.
    olderWaiting: async () => [],

    // The lengths of BullMQ's own keys: one pipelined round trip of LLEN/ZCARD,
    // where Queue#getJobCounts would need a Queue object per option.
    // On a cluster, one pipeline per option (its keys share its slot), all at once.
    queueCounts: async (ticketOptionIds) => {
      if (ticketOptionIds.length === 0) return []
      const groups = cluster ? ticketOptionIds.map((id) => [id]) : [ticketOptionIds]
      return (await Promise.all(groups.map(async (ids) => await countQueues(connection, keys, ids)))).flat()
    },

    answers: async (timeoutMs) => await redisAnswers(connection, timeoutMs),
    neverSent: commandNeverSent,
    onReconnect: (fn) => { connection.on('ready', fn) },
    waitUntilReady: async (timeoutMs) => { await waitUntilReady(connection, timeoutMs) },
    close: async () => {
      listeners?.stop()
      subscriber?.disconnect()
      await connection.quit().catch(() => { connection.disconnect() })
    },
  }
}

/** Subscribers of a channel on one server, this process's own among them. */
async function countSubscribers (connection: Redis, channel: string): Promise<number> {
  const reply = await connection.pubsub('NUMSUB', channel) as [string, number | string]
  return Number(reply[1])
}

/** The lengths of BullMQ's own keys for these options, in one pipeline (one slot on a cluster). */
async function countQueues (connection: RedisClient, keys: QueueKeys, ticketOptionIds: readonly string[]): Promise<QueueCounts[]> {
  const pipeline = connection.pipeline()
  for (const id of ticketOptionIds) {
    const name = purchaseQueueName(id)
    pipeline.llen(keys.toKey(name, 'wait'))
    pipeline.zcard(keys.toKey(name, 'prioritized'))
    pipeline.llen(keys.toKey(name, 'active'))
    pipeline.zcard(keys.toKey(name, 'delayed'))
  }
  const replies = (await pipeline.exec()) ?? []
  const count = (i: number): number => {
    const [err, value] = replies[i] ?? [new Error('no reply'), null]
    if (err !== null) throw err
    return Number(value)
  }
  return ticketOptionIds.map((_id, i): QueueCounts => ({ waiting: count(4 * i) + count(4 * i + 1), active: count(4 * i + 2), delayed: count(4 * i + 3) }))
}
