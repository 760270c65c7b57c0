/**
 * Tells every API process (its waiters, lines and streams: outcome-waiter.ts)
 * the outcomes of this API's direct batches, gathered over a few
 * milliseconds: each option's batches of that time go as one message, all
 * options' messages in one round trip. Publishing each batch on its own cost
 * a single buyer about 0.15 ms of its 1 ms (measured in-process, 3,000
 * sequential purchases): every API, this one too, reads and parses every
 * message, on a machine the buyer's own round trips share. The line number
 * a batch applied is advanced in Redis by the lease's release (within a
 * few milliseconds: direct-sales.ts putOffRelease); only the news waits, and a
 * waiter that misses it reads PostgreSQL. An API alone on the channel tells
 * only itself, in-process (the Redis backend's publishApplied:
 * shared/queues/line-listeners.ts).
 */
import type { Logger } from 'pino'
import type { AppliedMessage } from '../../shared/purchases/purchase-outcomes'

type Applied = Omit<AppliedMessage, 'type'>

export class OutcomeAnnouncer {
  private pending = new Map<string, Applied>()
  private timer: NodeJS.Timeout | null = null

  constructor (private readonly publish: (message: Applied) => Promise<void>, private readonly delayMs: number, private readonly log: Logger) {}

  /** Announces `message` within `delayMs`, with the option's other batches of that time. */
  add (message: Applied): void {
    if (message.outcomes.length === 0) return
    const earlier = this.pending.get(message.ticketOptionId)
    // Its own array of outcomes, which later batches of the option are added to in place.
    if (earlier === undefined) this.pending.set(message.ticketOptionId, { ticketOptionId: message.ticketOptionId, appliedLine: message.appliedLine, count: message.count, at: message.at, outcomes: message.outcomes.slice() })
    else mergeInto(earlier, message)
    this.timer ??= setTimeout(() => { void this.flush() }, this.delayMs)
  }

  /** Announces what is pending now (on close, so nothing is left unsaid). */
  async flush (): Promise<void> {
    if (this.timer !== null) clearTimeout(this.timer)
    this.timer = null
    const messages = [...this.pending.values()]
    this.pending = new Map()
    await Promise.all(messages.map(async (message) => {
      await this.publish(message).catch((err: unknown) => {
        // As a lost pub/sub message: waiters read PostgreSQL, lines read Redis.
        this.log.warn({ err, ticketOptionId: message.ticketOptionId }, 'could not announce direct outcomes')
      })
    }))
  }
}

function mergeInto (a: Applied, b: Applied): void {
  a.appliedLine = a.appliedLine === null ? b.appliedLine : b.appliedLine === null ? a.appliedLine : Math.max(a.appliedLine, b.appliedLine)
  a.count += b.count
  a.at = Math.max(a.at, b.at)
  for (const outcome of b.outcomes) a.outcomes.push(outcome)
}
