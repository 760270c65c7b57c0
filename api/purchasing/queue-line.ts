/**
 * A buyer's place in line, in O(1) however long the line is (API.md "Waiting
 * in line", DESIGN.md "Position in line, in O(1)"). Finding a job's index in a
 * BullMQ wait list is a scan, so instead each request takes a number at
 * enqueue (INCR of the option's line counter, in its hash slot on Redis), and workers
 * publish the highest number each batch applied, and the one a batch is
 * applying. Then
 *   position = 0 while its batch runs, else line - applied - 1
 * and the estimated wait is the position over the option's recent rate of
 * applied requests. This process learns the applied number from the outcome
 * messages it receives anyway (fan-out, no read per buyer); one it has not
 * heard of yet is read from the queue store once.
 */
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { BatchedCalls } from './batched-calls'

/** The rate counts the requests applied in this window (ms). */
export const RATE_WINDOW_MS = 5000
/** A rate is never measured over less than this (ms): one batch alone says little. */
const MIN_RATE_SPAN_MS = 500

export interface Place {
  /** requests of the option ahead of this one; 0 = being applied now */
  position: number
  /** from the option's recent rate of applied requests; null while unknown */
  estimated_wait_ms: number | null
}

export interface LineSnapshot {
  /** requests waiting or being applied */
  waiting: number
  /** applied per second over the last RATE_WINDOW_MS; 0 when none */
  applied_per_second: number
  /** for a buyer joining now; null while the rate is unknown */
  estimated_wait_ms: number | null
}

/** A request's number in its option's line, taken before its job is added. */
export interface LineTicket {
  ticket: number
  /** a direct lease whose fence must be up before the add (direct-fences.ts), or null */
  unfencedLease: string | null
}

interface OptionLine {
  /** highest number applied; null until read or heard */
  applied: number | null
  /** highest number in the batch being applied */
  applying: number
  /** (time, count) of recent batches, oldest first */
  recent: Array<{ at: number, count: number }>
  listeners: Set<() => void>
}

export class QueueLine {
  private readonly lines = new Map<string, OptionLine>()
  private readonly takes: BatchedCalls<undefined, LineTicket>

  constructor (private readonly backend: Pick<QueueBackend, 'takeLineNumbers' | 'readLine'>, private readonly capacity = 10_000) {
    this.takes = new BatchedCalls(async (ticketOptionId, takers) => {
      const { last, unfencedLease } = await this.backend.takeLineNumbers(ticketOptionId, takers.length)
      return takers.map((_taker, i) => ({ ticket: last - takers.length + 1 + i, unfencedLease }))
    })
  }

  private line (ticketOptionId: string): OptionLine {
    let line = this.lines.get(ticketOptionId)
    if (line === undefined) {
      // Bounded: the least recently touched option without watchers goes first.
      if (this.lines.size >= this.capacity) {
        for (const [id, l] of this.lines) {
          if (l.listeners.size === 0) { this.lines.delete(id); break }
        }
      }
      line = { applied: null, applying: 0, recent: [], listeners: new Set() }
      this.lines.set(ticketOptionId, line)
    }
    return line
  }

  /**
   * The next number in the option's line, for a request about to be enqueued.
   * Requests of one option that ask while a take is in flight (or in the same
   * turn of the event loop) share the next INCRBY and get consecutive numbers
   * in the order they asked (batched-calls.ts): in a sale the line costs one
   * command per batch, not one per buyer, and numbers follow the order asked.
   */
  async take (ticketOptionId: string): Promise<LineTicket> {
    return await this.takes.call(ticketOptionId, undefined)
  }

  /** A worker committed a batch (outcome message). */
  applied (ticketOptionId: string, appliedLine: number | null, count: number, at: number): void {
    const line = this.line(ticketOptionId)
    if (appliedLine !== null && (line.applied === null || appliedLine > line.applied)) line.applied = appliedLine
    if (count > 0) line.recent.push({ at, count })
    this.trim(line, Date.now())
    this.notify(line)
  }

  /** A worker started a batch (outcome message). */
  applying (ticketOptionId: string, applyingLine: number): void {
    const line = this.line(ticketOptionId)
    if (applyingLine > line.applying) {
      line.applying = applyingLine
      this.notify(line)
    }
  }

  /** Forget what was heard: messages may have been missed (the subscriber reconnected). */
  forgetApplied (): void {
    for (const line of this.lines.values()) line.applied = null
  }

  private trim (line: OptionLine, now: number): void {
    while (line.recent.length > 0 && (line.recent[0] as { at: number }).at < now - RATE_WINDOW_MS) line.recent.shift()
  }

  private notify (line: OptionLine): void {
    for (const listener of line.listeners) listener()
  }

  /**
   * Applied per second over the window; 0 when nothing was applied in it. The
   * span is the window, or since its first batch when the option only just
   * started (so the first second of a sale is not divided by five).
   */
  private rate (line: OptionLine, now: number): number {
    this.trim(line, now)
    const first = line.recent[0]
    if (first === undefined) return 0
    const total = line.recent.reduce((sum, r) => sum + r.count, 0)
    const spanMs = Math.min(RATE_WINDOW_MS, Math.max(MIN_RATE_SPAN_MS, now - first.at))
    return total / (spanMs / 1000)
  }

  private estimate (line: OptionLine, position: number, now: number): number | null {
    const rate = this.rate(line, now)
    if (position === 0) return 0
    return rate === 0 ? null : Math.round((position / rate) * 1000)
  }

  private async appliedOf (ticketOptionId: string, line: OptionLine): Promise<number> {
    if (line.applied === null) {
      const { applied: stored } = await this.backend.readLine(ticketOptionId)
      const heard = line.applied as number | null // a message may have arrived during the read
      line.applied = Math.max(heard ?? 0, stored)
    }
    return line.applied
  }

  /** Where the request numbered `ticket` stands. */
  async place (ticketOptionId: string, ticket: number): Promise<Place> {
    const line = this.line(ticketOptionId)
    const applied = await this.appliedOf(ticketOptionId, line)
    const position = ticket <= line.applying ? 0 : Math.max(0, ticket - applied - 1)
    return { position, estimated_wait_ms: this.estimate(line, position, Date.now()) }
  }

  /** How long the line is now: two counters in one round trip. */
  async snapshot (ticketOptionId: string): Promise<LineSnapshot> {
    const line = this.line(ticketOptionId)
    const { taken, applied: stored } = await this.backend.readLine(ticketOptionId)
    const applied = Math.max(line.applied ?? 0, stored)
    line.applied = applied
    const waiting = Math.max(0, taken - applied)
    const now = Date.now()
    return { waiting, applied_per_second: Math.round(this.rate(line, now) * 10) / 10, estimated_wait_ms: waiting === 0 ? 0 : this.estimate(line, waiting, now) }
  }

  /** Calls `listener` whenever the option's line moves; returns the function that stops it. */
  watch (ticketOptionId: string, listener: () => void): () => void {
    const line = this.line(ticketOptionId)
    line.listeners.add(listener)
    return () => { line.listeners.delete(listener) }
  }

  /** Listeners registered over all options (a stream that ended must leave none behind). */
  get watchers (): number {
    let n = 0
    for (const line of this.lines.values()) n += line.listeners.size
    return n
  }
}
