/**
 * Waits for outcomes published by workers, by job id (a purchase's or hold's own id). One subscriber connection
 * per API process, whatever the number of options. A waiter is registered
 * before its job is added, so an outcome published at once is never missed.
 */
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { purchaseOutcomesChannel } from '../../shared/queues/queue-names'
import { parseLineMessage, type LineMessage } from '../../shared/purchases/purchase-outcomes'
import type { QueueLine } from './queue-line'
import type { SaleOutcome } from '../../shared/purchases/sale-store'

export interface OutcomeWait {
  /** the outcome, or null when none arrived within the time limit */
  promise: Promise<SaleOutcome | null>
  cancel: () => void
}

type Resolver = (record: SaleOutcome | null) => void

export class OutcomeWaiter {
  private readonly waiters = new Map<string, Set<Resolver>>()
  private readonly channel: string

  /** `line` hears every batch too, to keep each option's place in line (queue-line.ts). */
  constructor (private readonly subscriber: Redis, prefix: string, private readonly log: Logger, private readonly line?: QueueLine) {
    this.channel = purchaseOutcomesChannel(prefix)
  }

  async start (): Promise<void> {
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return
      let parsed: LineMessage | null
      try {
        parsed = parseLineMessage(message)
      } catch (err) {
        this.log.warn({ err }, 'unreadable purchase outcome message')
        return
      }
      if (parsed?.type === 'applying') {
        this.line?.applying(parsed.ticketOptionId, parsed.applyingLine)
      } else if (parsed?.type === 'applied') {
        if (parsed.ticketOptionId !== '') this.line?.applied(parsed.ticketOptionId, parsed.appliedLine, parsed.count, parsed.at)
        if (this.waiters.size > 0) for (const outcome of parsed.outcomes) this.settle(outcome.id, outcome)
      }
    })
    // ioredis re-subscribes by itself after a reconnect, but only if the
    // connection it lost had subscribed; after a reconnect that failed midway
    // it may not know. Subscribing again on every ready is harmless. Messages
    // may have been missed meanwhile: the applied line numbers are read again.
    this.subscriber.on('ready', () => {
      this.line?.forgetApplied()
      this.subscriber.subscribe(this.channel).catch((err: unknown) => { this.log.warn({ err }, 'could not subscribe to purchase outcomes') })
    })
    await this.subscriber.subscribe(this.channel)
  }

  wait (jobId: string, timeoutMs: number): OutcomeWait {
    let resolver!: Resolver
    const promise = new Promise<SaleOutcome | null>((resolve) => { resolver = resolve })
    let set = this.waiters.get(jobId)
    if (set === undefined) {
      set = new Set()
      this.waiters.set(jobId, set)
    }
    const remove = (): void => {
      clearTimeout(timer)
      const current = this.waiters.get(jobId)
      // The set holds `done`, not `resolver`: deleting `resolver` left every
      // finished wait in the map forever (memory grew with every purchase).
      current?.delete(done)
      if (current?.size === 0) this.waiters.delete(jobId)
    }
    const done: Resolver = (record) => { remove(); resolver(record) }
    const timer = setTimeout(() => { done(null) }, timeoutMs)
    set.add(done)
    return { promise, cancel: () => { done(null) } }
  }

  /** Requests waiting for an outcome (a stream whose client left must leave none behind). */
  get waiting (): number {
    return this.waiters.size
  }

  private settle (jobId: string, record: SaleOutcome): void {
    const set = this.waiters.get(jobId)
    if (set === undefined) return
    for (const resolve of [...set]) resolve(record)
  }
}
