/**
 * The registry of option queues that have work: a sorted set of option ids
 * scored by last use, plus a wake-up channel. The API touches an option
 * before it enqueues; workers subscribe to wake-ups and also rescan the set
 * every few seconds, so a missed message only delays a job and never strands
 * it. Only the API writes ids, and only for options that exist.
 */
import { isCluster, type RedisClient } from '../redis'
import { activeOptionsKey, queueWakeupChannel } from './queue-names'

/** Marks an option as active and wakes the workers up (one round trip). */
export async function touchOption (redis: RedisClient, prefix: string, ticketOptionId: string, now = Date.now()): Promise<void> {
  if (isCluster(redis)) {
    // The set and the sharded channel live in different slots: no MULTI across them (auto-pipelined all the same).
    await Promise.all([redis.zadd(activeOptionsKey(prefix), now, ticketOptionId), redis.spublish(queueWakeupChannel(prefix), ticketOptionId)])
    return
  }
  await redis.multi()
    .zadd(activeOptionsKey(prefix), now, ticketOptionId)
    .publish(queueWakeupChannel(prefix), ticketOptionId)
    .exec()
}

/** All registered options with the time each was last used. */
export async function listActiveOptions (redis: RedisClient, prefix: string): Promise<Array<{ ticketOptionId: string, lastUsedAt: number }>> {
  const flat = await redis.zrange(activeOptionsKey(prefix), 0, -1, 'WITHSCORES')
  const result: Array<{ ticketOptionId: string, lastUsedAt: number }> = []
  for (let i = 0; i + 1 < flat.length; i += 2) result.push({ ticketOptionId: flat[i] as string, lastUsedAt: Number(flat[i + 1]) })
  return result
}

// Removes the member only if nobody touched it since `lastUsedAt` was read,
// so an API that enqueues at the same moment never loses its registration.
const REMOVE_IF_UNCHANGED = `
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0`

/** Unregisters an idle option whose queue is empty; false when it was used again meanwhile. */
export async function releaseOption (redis: RedisClient, prefix: string, ticketOptionId: string, lastUsedAt: number): Promise<boolean> {
  const removed = await redis.eval(REMOVE_IF_UNCHANGED, 1, activeOptionsKey(prefix), ticketOptionId, String(lastUsedAt))
  return removed === 1
}
