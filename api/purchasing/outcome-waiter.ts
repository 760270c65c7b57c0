/**
 * Waits for outcomes published by workers, by job id (a purchase's or hold's own id). One subscription
 * per API process (a Redis channel or a PostgreSQL LISTEN), whatever the number of options. A waiter is registered
 * before its job is added, so an outcome published at once is never missed. After a reconnect, when
 * outcomes may have been published while nobody listened, each wait that can look its outcome up
 * does so, instead of sitting out its whole time limit.
 */
import type { Logger } from 'pino'
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

/** Reads a waited-for outcome where it is recorded (PostgreSQL): null when it is not, yet. */
export type OutcomeLookup = () => Promise<SaleOutcome | null>

/** Lookups run after a reconnect at most this many at a time, so they do not crowd the pool. */
const LOOKUPS_AT_ONCE = 4

export class OutcomeWaiter {
  private readonly waiters = new Map<string, Set<Resolver>>()
  private readonly lookups = new Map<Resolver, OutcomeLookup>()

  /** `line` hears every batch too, to keep each option's place in line (queue-line.ts). */
  constructor (
    private readonly backend: Pick<QueueBackend, 'subscribeLineMessages'>,
    private readonly line?: QueueLine,
    private readonly log?: Pick<Logger, 'warn'>
  ) {}

  async start (): Promise<void> {
    await this.backend.subscribeLineMessages((message) => { this.hear(message) }, () => { this.missedMessages() })
  }

  /**
   * Called once listening again: an outcome published from now on is heard, one
   * published before is recorded, so a lookup started now misses neither.
   */
  private missedMessages (): void {
    this.line?.forgetApplied()
    void this.lookUpAll()
  }

  private async lookUpAll (): Promise<void> {
    const pending = [...this.lookups]
    const next = async (): Promise<void> => {
      for (let entry = pending.shift(); entry !== undefined; entry = pending.shift()) {
        const [resolve, lookup] = entry
        if (!this.lookups.has(resolve)) continue // settled meanwhile
        try {
          const outcome = await lookup()
          if (outcome !== null) resolve(outcome)
        } catch (err) {
          // The wait goes on: its time limit still ends it.
          this.log?.warn({ err }, 'could not look up an outcome after a reconnect')
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(LOOKUPS_AT_ONCE, pending.length) }, next))
  }

  private hear (message: LineMessage): void {
    if (message.type === 'applying') {
      this.line?.applying(message.ticketOptionId, message.applyingLine)
    } else {
      if (message.ticketOptionId !== '') this.line?.applied(message.ticketOptionId, message.appliedLine, message.count, message.at)
      if (this.waiters.size > 0) for (const outcome of message.outcomes) this.settle(outcome.id, outcome)
    }
  }

  /** `lookup`, when given, is asked after a reconnect (see `missedMessages`). */
  wait (jobId: string, timeoutMs: number, lookup?: OutcomeLookup): OutcomeWait {
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
      this.lookups.delete(done)
    }
    const done: Resolver = (record) => { remove(); resolver(record) }
    const timer = setTimeout(() => { done(null) }, timeoutMs)
    set.add(done)
    if (lookup !== undefined) this.lookups.set(done, lookup)
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
