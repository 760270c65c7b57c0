/**
 * An option's direct lease on Redis (api/purchasing/direct-sales.ts explains
 * the direct path). Three scripts, each on keys of the option's hash slot
 * only, so they run on one node of a Redis Cluster too:
 * - claim: when nothing of the option waits, runs or is delayed in its queue,
 *   no line number is taken and not applied, and nobody holds the lease, take
 *   `count` line numbers and the lease for `leaseMs`;
 * - release: after the batch, advance the applied line (when it committed),
 *   drop the lease if it is still ours, and publish the outcomes (in the
 *   script, except on a cluster, where the channel has a slot of its own);
 * - the worker's read of how long the lease still lives (PTTL).
 * Invariant 4 rests on the claim's check: a worker holds an option's job
 * `active` for the whole of its batch, so no lease is granted while a batch
 * runs, and a worker waits for a lease to end before it starts one.
 */
import type { QueueKeys } from 'bullmq'
import { isCluster, publishMessage, type RedisClient } from '../redis'
import type { AppliedMessage } from '../purchases/purchase-outcomes'
import { directLeaseKey, lineAppliedKey, lineTicketKey, purchaseOutcomesChannel, purchaseQueueName } from './queue-names'

// KEYS: lease, line taken, line applied, BullMQ wait, active, delayed, prioritized.
// ARGV: count, lease ms, token. Returns the first line number, or 0 (not now).
const CLAIM = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local taken = tonumber(redis.call('GET', KEYS[2]) or '0')
local applied = tonumber(redis.call('GET', KEYS[3]) or '0')
if taken > applied then return 0 end
if redis.call('LLEN', KEYS[4]) > 0 or redis.call('LLEN', KEYS[5]) > 0 or redis.call('ZCARD', KEYS[6]) > 0 or redis.call('ZCARD', KEYS[7]) > 0 then return 0 end
if taken < applied then redis.call('SET', KEYS[2], applied) end
local last = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return last - tonumber(ARGV[1]) + 1`

// KEYS: lease, line applied. ARGV: token, applied line ('' when the batch did not commit),
// and a channel and message to publish ('' for none): one command for the whole release.
const RELEASE = `
if ARGV[2] ~= '' then
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[2]) > current then redis.call('SET', KEYS[2], ARGV[2]) end
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 0`

type ScriptCall = (...args: Array<string | number>) => Promise<unknown>

/** Defines the script once per connection (ioredis then sends EVALSHA, and the script only when Redis lacks it). */
function script (redis: RedisClient, name: string, numberOfKeys: number, lua: string): ScriptCall {
  const commands = redis as unknown as Record<string, ScriptCall | undefined>
  if (commands[name] === undefined) redis.defineCommand(name, { numberOfKeys, lua })
  return async (...args) => await (commands[name] as ScriptCall).apply(redis, args)
}

export interface DirectLeases {
  claim: (ticketOptionId: string, count: number, leaseMs: number, token: string) => Promise<number | null>
  release: (ticketOptionId: string, token: string, applied: Omit<AppliedMessage, 'type'> | null) => Promise<void>
  msLeft: (ticketOptionId: string) => Promise<number>
}

export function directLeases (redis: RedisClient, prefix: string, keys: QueueKeys): DirectLeases {
  const claim = script(redis, 'ticketsClaimDirectLease', 7, CLAIM)
  const release = script(redis, 'ticketsReleaseDirectLease', 2, RELEASE)
  const queueKey = (ticketOptionId: string, type: string): string => keys.toKey(purchaseQueueName(ticketOptionId), type)
  return {
    claim: async (ticketOptionId, count, leaseMs, token) => {
      const first = Number(await claim(
        directLeaseKey(prefix, ticketOptionId), lineTicketKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId),
        queueKey(ticketOptionId, 'wait'), queueKey(ticketOptionId, 'active'), queueKey(ticketOptionId, 'delayed'), queueKey(ticketOptionId, 'prioritized'),
        count, leaseMs, token))
      return first > 0 ? first : null
    },
    release: async (ticketOptionId, token, applied) => {
      const keysAndLine = [directLeaseKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId), token, applied?.appliedLine ?? '']
      const message = applied === null || applied.outcomes.length === 0 ? null : JSON.stringify({ type: 'applied', ...applied } satisfies AppliedMessage)
      if (message === null) {
        await release(...keysAndLine, '', '')
      } else if (isCluster(redis)) {
        // The sharded channel lives in another slot than the lease: two commands, sent together.
        await Promise.all([release(...keysAndLine, '', ''), publishMessage(redis, purchaseOutcomesChannel(prefix), message)])
      } else {
        await release(...keysAndLine, purchaseOutcomesChannel(prefix), message)
      }
    },
    msLeft: async (ticketOptionId) => {
      const ms = await redis.pttl(directLeaseKey(prefix, ticketOptionId))
      // -2: no lease; -1 (no expiry) cannot be set by the claim, but must not be read as none.
      return ms === -2 ? 0 : Math.max(ms, 1)
    },
  }
}
