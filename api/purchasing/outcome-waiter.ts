/**
 * Waits for outcomes published by workers, by job id (a purchase's or hold's own id). One subscriber connection
 * per API process, whatever the number of options. A waiter is registered
 * before its job is added, so an outcome published at once is never missed.
 */
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { purchaseOutcomesChannel } from '../../shared/queues/queue-names'
import { parseOutcomes } from '../../shared/purchases/purchase-outcomes'
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

  constructor (private readonly subscriber: Redis, prefix: string, private readonly log: Logger) {
    this.channel = purchaseOutcomesChannel(prefix)
  }

  async start (): Promise<void> {
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel || this.waiters.size === 0) return
      let outcomes: SaleOutcome[]
      try {
        outcomes = parseOutcomes(message)
      } catch (err) {
        this.log.warn({ err }, 'unreadable purchase outcome message')
        return
      }
      for (const outcome of outcomes) this.settle(outcome.id, outcome)
    })
    // ioredis re-subscribes by itself after a reconnect, but only if the
    // connection it lost had subscribed; after a reconnect that failed midway
    // it may not know. Subscribing again on every ready is harmless.
    this.subscriber.on('ready', () => {
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

  private settle (jobId: string, record: SaleOutcome): void {
    const set = this.waiters.get(jobId)
    if (set === undefined) return
    for (const resolve of [...set]) resolve(record)
  }
}
