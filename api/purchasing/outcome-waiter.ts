/**
 * Waits for purchase outcomes published by workers. One subscriber connection
 * per API process, whatever the number of options. A waiter is registered
 * before its job is added, so an outcome published at once is never missed.
 */
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { purchaseOutcomesChannel } from '../../shared/queues/queue-names'
import { parseOutcomes } from '../../shared/purchases/purchase-outcomes'
import type { PurchaseRecord } from '../../shared/purchases/purchase-store'

export interface OutcomeWait {
  /** the outcome, or null when none arrived within the time limit */
  promise: Promise<PurchaseRecord | null>
  cancel: () => void
}

type Resolver = (record: PurchaseRecord | null) => void

export class OutcomeWaiter {
  private readonly waiters = new Map<string, Set<Resolver>>()
  private readonly channel: string

  constructor (private readonly subscriber: Redis, prefix: string, private readonly log: Logger) {
    this.channel = purchaseOutcomesChannel(prefix)
  }

  async start (): Promise<void> {
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel || this.waiters.size === 0) return
      let outcomes: PurchaseRecord[]
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

  wait (purchaseId: string, timeoutMs: number): OutcomeWait {
    let resolver!: Resolver
    const promise = new Promise<PurchaseRecord | null>((resolve) => { resolver = resolve })
    let set = this.waiters.get(purchaseId)
    if (set === undefined) {
      set = new Set()
      this.waiters.set(purchaseId, set)
    }
    const remove = (): void => {
      clearTimeout(timer)
      const current = this.waiters.get(purchaseId)
      // The set holds `done`, not `resolver`: deleting `resolver` left every
      // finished wait in the map forever (memory grew with every purchase).
      current?.delete(done)
      if (current?.size === 0) this.waiters.delete(purchaseId)
    }
    const done: Resolver = (record) => { remove(); resolver(record) }
    const timer = setTimeout(() => { done(null) }, timeoutMs)
    set.add(done)
    return { promise, cancel: () => { done(null) } }
  }

  private settle (purchaseId: string, record: PurchaseRecord): void {
    const set = this.waiters.get(purchaseId)
    if (set === undefined) return
    for (const resolve of [...set]) resolve(record)
  }
}
