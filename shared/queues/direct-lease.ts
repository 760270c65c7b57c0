/**
 * An option's direct lease on Redis (api/purchasing/direct-sales.ts explains
 * the direct path). Scripts on keys of the option's hash slot only, so they
 * run on one node of a Redis Cluster too:
 * - claim: when nothing of the option waits, runs or is delayed in its queue,
 *   no line number is taken and not applied, and nobody holds the lease, take
 *   `count` line numbers and the lease for `leaseMs`;
 * - release: after the batch, advance the applied line (when it committed)
 *   and drop the lease if it is still ours (the outcomes are announced apart:
 *   api/purchasing/outcome-announcer.ts);
 * - the worker's read of how long the lease still lives (PTTL);
 * - a queued request's line number, with the token of a lease that lives and
 *   whose fence is not up yet (api/purchasing/direct-fences.ts), and the mark
 *   that it is up.
 * Invariant 4 rests on the claim's check: a worker holds an option's job
 * `active` for the whole of its batch, so no lease is granted while a batch
 * runs, and a worker waits for a lease to end before it starts one.
 */
import type { QueueKeys } from 'bullmq'
import type { RedisClient } from '../redis'
import { directFenceKey, directLeaseKey, lineAppliedKey, lineTicketKey, purchaseQueueName } from './queue-names'

/** Lua: advance the applied line to `line` (unless '') and drop the lease if `token` still holds it. */
function releaseLua (lease: string, applied: string, token: string, line: string): string {
  return `
if ${line} ~= '' and tonumber(${line}) > tonumber(redis.call('GET', ${applied}) or '0') then redis.call('SET', ${applied}, ${line}) end
if redis.call('GET', ${lease}) == ${token} then redis.call('DEL', ${lease}) end`
}

// KEYS: lease, line taken, line applied, BullMQ wait, active, delayed, prioritized.
// ARGV: count, lease ms, token, and the release of this API's last batch of the option
// that it put off (its token and applied line, '' for none), done first.
// Returns the first line number, or 0 (not now).
const CLAIM = `
if ARGV[4] ~= '' then ${releaseLua('KEYS[1]', 'KEYS[3]', 'ARGV[4]', 'ARGV[5]')}
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local taken = tonumber(redis.call('GET', KEYS[2]) or '0')
local applied = tonumber(redis.call('GET', KEYS[3]) or '0')
if taken > applied then return 0 end
if redis.call('LLEN', KEYS[4]) > 0 or redis.call('LLEN', KEYS[5]) > 0 or redis.call('ZCARD', KEYS[6]) > 0 or redis.call('ZCARD', KEYS[7]) > 0 then return 0 end
if taken < applied then redis.call('SET', KEYS[2], applied) end
local last = redis.call('INCRBY', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
return last - tonumber(ARGV[1]) + 1`

// KEYS: lease, line applied. ARGV: token, applied line ('' when the batch did not commit).
const RELEASE = `${releaseLua('KEYS[1]', 'KEYS[2]', 'ARGV[1]', 'ARGV[2]')}
return 0`

// KEYS: line taken, lease, fence. ARGV: count.
// Returns the last number taken, and the lease's token when a lease lives and its fence is not up ('' otherwise).
const TAKE_LINE = `
local last = redis.call('INCRBY', KEYS[1], ARGV[1])
local lease = redis.call('GET', KEYS[2])
if lease and lease ~= redis.call('GET', KEYS[3]) then return {last, lease} end
return {last, ''}`

// KEYS: lease, fence. ARGV: token. The mark lives as long as the lease it is for.
const MARK_FENCED = `
local ms = redis.call('PTTL', KEYS[1])
if ms > 0 and redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[1], 'PX', ms) end
return 0`

type ScriptCall = (...args: Array<string | number>) => Promise<unknown>

/** Defines the script once per connection (ioredis then sends EVALSHA, and the script only when Redis lacks it). */
function script (redis: RedisClient, name: string, numberOfKeys: number, lua: string): ScriptCall {
  const commands = redis as unknown as Record<string, ScriptCall | undefined>
  if (commands[name] === undefined) redis.defineCommand(name, { numberOfKeys, lua })
  return async (...args) => await (commands[name] as ScriptCall).apply(redis, args)
}

/** A release put off until the option's next claim (api/purchasing/direct-sales.ts). */
export interface PutOffRelease {
  token: string
  appliedLine: number | null
}

export interface DirectLeases {
  claim: (ticketOptionId: string, count: number, leaseMs: number, token: string, release?: PutOffRelease) => Promise<number | null>
  release: (ticketOptionId: string, token: string, appliedLine: number | null) => Promise<void>
  msLeft: (ticketOptionId: string) => Promise<number>
  takeLine: (ticketOptionId: string, count: number) => Promise<TakenLine>
  markFenced: (ticketOptionId: string, token: string) => Promise<void>
}

/** Line numbers taken for requests about to be queued. */
export interface TakenLine {
  /** the last number taken */
  last: number
  /** the token of the option's direct lease, when one lives and its fence is not up: raise it before the add */
  unfencedLease: string | null
}

export function directLeases (redis: RedisClient, prefix: string, keys: QueueKeys): DirectLeases {
  const claim = script(redis, 'ticketsClaimDirectLease', 7, CLAIM)
  const release = script(redis, 'ticketsReleaseDirectLease', 2, RELEASE)
  const takeLine = script(redis, 'ticketsTakeLine', 3, TAKE_LINE)
  const markFenced = script(redis, 'ticketsMarkFenced', 2, MARK_FENCED)
  const queueKey = (ticketOptionId: string, type: string): string => keys.toKey(purchaseQueueName(ticketOptionId), type)
  return {
    claim: async (ticketOptionId, count, leaseMs, token, release) => {
      const first = Number(await claim(
        directLeaseKey(prefix, ticketOptionId), lineTicketKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId),
        queueKey(ticketOptionId, 'wait'), queueKey(ticketOptionId, 'active'), queueKey(ticketOptionId, 'delayed'), queueKey(ticketOptionId, 'prioritized'),
        count, leaseMs, token, release?.token ?? '', release?.appliedLine ?? ''))
      return first > 0 ? first : null
    },
    release: async (ticketOptionId, token, appliedLine) => {
      await release(directLeaseKey(prefix, ticketOptionId), lineAppliedKey(prefix, ticketOptionId), token, appliedLine ?? '')
    },
    msLeft: async (ticketOptionId) => {
      const ms = await redis.pttl(directLeaseKey(prefix, ticketOptionId))
      // -2: no lease; -1 (no expiry) cannot be set by the claim, but must not be read as none.
      return ms === -2 ? 0 : Math.max(ms, 1)
    },
    takeLine: async (ticketOptionId, count) => {
      const [last, lease] = await takeLine(lineTicketKey(prefix, ticketOptionId), directLeaseKey(prefix, ticketOptionId), directFenceKey(prefix, ticketOptionId), count) as [number, string]
      return { last: Number(last), unfencedLease: lease === '' ? null : lease }
    },
    markFenced: async (ticketOptionId, token) => {
      await markFenced(directLeaseKey(prefix, ticketOptionId), directFenceKey(prefix, ticketOptionId), token)
    },
  }
}
