/**
 * Waits for outcomes published by workers, by job id (a purchase's or hold's own id). One subscription
 * per API process (a Redis channel or a PostgreSQL LISTEN), whatever the number of options. A waiter is registered
 * before its job is added, so an outcome published at once is never missed.
 */
import type { QueueBackend } from '../../shared/queues/queue-backend'
import type { LineMessage } from '../../shared/purchases/purchase-outcomes'
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

  /** `line` hears every batch too, to keep each option's place in line (queue-line.ts). */
  constructor (private readonly backend: Pick<QueueBackend, 'subscribeLineMessages'>, private readonly line?: QueueLine) {}

  async start (): Promise<void> {
    // After a reconnect messages may have been missed: the applied line numbers are read again.
    await this.backend.subscribeLineMessages((message) => { this.hear(message) }, () => { this.line?.forgetApplied() })
  }

  private hear (message: LineMessage): void {
    if (message.type === 'applying') {
      this.line?.applying(message.ticketOptionId, message.applyingLine)
    } else {
      if (message.ticketOptionId !== '') this.line?.applied(message.ticketOptionId, message.appliedLine, message.count, message.at)
      if (this.waiters.size > 0) for (const outcome of message.outcomes) this.settle(outcome.id, outcome)
    }
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
