/**
 * What workers tell every API process over one Redis pub/sub channel, so an
 * API holds one subscriber connection however many options exist:
 * - `applied`: the outcomes of a committed batch, each keyed by its request's
 *   job id (`id`), with the option's line number applied so far and how many
 *   requests the batch applied, from which APIs know each waiting buyer's
 *   position and the option's rate (API.md "Waiting in line");
 * - `applying`: a batch has started, up to that line number, so the requests
 *   in it read position 0 while it runs.
 * Pub/sub may drop a message (a reconnect); the API then reads the recorded
 * outcome from PostgreSQL before it answers 202, and the applied line number
 * from Redis.
 */
import { execPipeline, isCluster, publishMessage, type RedisClient } from '../redis'
import type { Logger } from 'pino'
import { lineAppliedKey, purchaseOutcomesChannel } from '../queues/queue-names'
import type { SaleOutcome } from './sale-store'

export interface AppliedMessage {
  type: 'applied'
  ticketOptionId: string
  /** the highest line number applied, or null when the batch held none (jobs of older code) */
  appliedLine: number | null
  /** requests applied by this batch (new ones only), for the option's rate */
  count: number
  /** ms since epoch */
  at: number
  outcomes: SaleOutcome[]
}

export interface ApplyingMessage {
  type: 'applying'
  ticketOptionId: string
  /** the highest line number in the batch now being applied */
  applyingLine: number
}

export type LineMessage = AppliedMessage | ApplyingMessage

// Keeps the highest number: a batch never moves the applied line back.
const SET_IF_HIGHER = `
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 0`

/** Publishes a committed batch, and records its line number for APIs that missed the message. One round trip. */
export async function publishApplied (redis: RedisClient, prefix: string, message: Omit<AppliedMessage, 'type'>): Promise<void> {
  if (message.outcomes.length === 0) return
  if (isCluster(redis)) {
    // The option's line key and the sharded channel live in different slots: no pipeline across them.
    await Promise.all([
      message.appliedLine === null ? null : redis.eval(SET_IF_HIGHER, 1, lineAppliedKey(prefix, message.ticketOptionId), String(message.appliedLine)),
      redis.spublish(purchaseOutcomesChannel(prefix), JSON.stringify({ type: 'applied', ...message })),
    ])
    return
  }
  const pipeline = redis.pipeline()
  if (message.appliedLine !== null) pipeline.eval(SET_IF_HIGHER, 1, lineAppliedKey(prefix, message.ticketOptionId), String(message.appliedLine))
  pipeline.publish(purchaseOutcomesChannel(prefix), JSON.stringify({ type: 'applied', ...message }))
  await execPipeline(pipeline)
}

/** Says a batch has started (best effort: a lost message only delays a position reading 0). */
export async function publishApplying (redis: RedisClient, prefix: string, ticketOptionId: string, applyingLine: number): Promise<void> {
  await publishMessage(redis, purchaseOutcomesChannel(prefix), JSON.stringify({ type: 'applying', ticketOptionId, applyingLine } satisfies ApplyingMessage))
}

/**
 * What a subscription does with each raw message, on either queue backend:
 * parse it, pass it on, and log (not throw) one that cannot be read.
 */
export function lineMessageReader (onMessage: (message: LineMessage) => void, log: Logger): (raw: string) => void {
  return (raw) => {
    let message: LineMessage | null
    try {
      message = parseLineMessage(raw)
    } catch (err) {
      log.warn({ err }, 'unreadable purchase outcome message')
      return
    }
    if (message !== null) onMessage(message)
  }
}

/** A message of the channel; a bare array is what workers of the first version published. */
export function parseLineMessage (message: string): LineMessage | null {
  const parsed: unknown = JSON.parse(message)
  const isOutcome = (o: unknown): o is SaleOutcome => typeof o === 'object' && o !== null && typeof (o as SaleOutcome).id === 'string'
  if (Array.isArray(parsed)) return { type: 'applied', ticketOptionId: '', appliedLine: null, count: 0, at: Date.now(), outcomes: parsed.filter(isOutcome) }
  if (typeof parsed !== 'object' || parsed === null) return null
  const m = parsed as Record<string, unknown>
  if (m.type === 'applied' && typeof m.ticketOptionId === 'string' && Array.isArray(m.outcomes)) {
    return {
      type: 'applied',
      ticketOptionId: m.ticketOptionId,
      appliedLine: typeof m.appliedLine === 'number' ? m.appliedLine : null,
      count: typeof m.count === 'number' ? m.count : 0,
      at: typeof m.at === 'number' ? m.at : Date.now(),
      outcomes: m.outcomes.filter(isOutcome),
    }
  }
  if (m.type === 'applying' && typeof m.ticketOptionId === 'string' && typeof m.applyingLine === 'number') {
    return { type: 'applying', ticketOptionId: m.ticketOptionId, applyingLine: m.applyingLine }
  }
  return null
}
