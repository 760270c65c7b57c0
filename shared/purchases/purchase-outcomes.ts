/**
 * Outcomes travel from workers to every API process over one Redis pub/sub
 * channel, so an API holds one subscriber connection however many options
 * exist. Each is keyed by its request's job id (`id`). Pub/sub may drop a
 * message (a reconnect); the API then reads the recorded outcome from
 * PostgreSQL before it answers 202.
 */
import type { Redis } from 'ioredis'
import { purchaseOutcomesChannel } from '../queues/queue-names'
import type { SaleOutcome } from './sale-store'

export async function publishOutcomes (redis: Redis, prefix: string, outcomes: readonly SaleOutcome[]): Promise<void> {
  if (outcomes.length === 0) return
  await redis.publish(purchaseOutcomesChannel(prefix), JSON.stringify(outcomes))
}

export function parseOutcomes (message: string): SaleOutcome[] {
  const parsed: unknown = JSON.parse(message)
  if (!Array.isArray(parsed)) return []
  return parsed.filter((o): o is SaleOutcome => typeof o === 'object' && o !== null && typeof (o as SaleOutcome).id === 'string')
}
