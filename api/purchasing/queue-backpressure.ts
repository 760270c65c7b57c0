/**
 * Backpressure on the option queues: at most QUEUE_MAX_WAITING purchases wait
 * in one option's queue; beyond it the API answers 503 QUEUE_FULL at once and
 * adds nothing (API.md "Outcomes").
 *
 * The trade-off: asking Redis for the queue's length on every request would
 * add a round trip to every purchase in a sale, and an exact check would
 * have to run inside BullMQ's own add script. Instead each API process keeps
 * one count per option: the waiting count read from Redis (one read at a
 * time, shared by the requests that need it), plus the places it has handed
 * out since. The count is read again once it is COUNT_MAX_AGE_MS old when
 * the queue is at least half full by it, and once it is RELAXED_MAX_AGE_MS
 * old otherwise: far from the cap a stale count cannot let the queue
 * overflow, and with many options at once (bench `spread`) a read every
 * 100 ms per option was nearly one round trip per purchase. Within one process the cap is
 * exact: a place is reserved before the job is added and given back when no
 * job was added. Across N API replicas the others' additions are seen only at
 * the next read, so the queue may overshoot by what the other replicas add in
 * COUNT_MAX_AGE_MS (a few hundred jobs at sale rates); the cap protects Redis
 * memory and the wait of the last buyer, neither of which needs it exact.
 */

/** How old a queue's waiting count may get before a request reads it again (ms), once the queue is half full. */
export const COUNT_MAX_AGE_MS = 100
/** The same while the queue is less than half full by this process's count (ms). */
export const RELAXED_MAX_AGE_MS = 1000

interface Count {
  /** requests waiting: the last read, plus the places kept since */
  waiting: number
  /** places handed out whose job is not added (or given up) yet */
  inFlight: number
  /** places kept (jobs added) since this process started counting: a read in flight learns what it may have missed */
  kept: number
  readAt: number
  reading: Promise<void> | null
}

/** One reserved place in an option's queue. */
export interface QueueSlot {
  /** The job was added: the place stays counted. */
  keep: () => void
  /** No job was added: the place is free again. Does nothing after keep or release. */
  release: () => void
}

export interface QueueBackpressureOptions {
  /** Reads the number of jobs waiting in an option's queue (throws when Redis is down). */
  waitingCount: (ticketOptionId: string) => Promise<number>
  maxWaiting: number
  maxAgeMs?: number
  relaxedMaxAgeMs?: number
  /** most options tracked; beyond it the counts start over (each is read again) */
  capacity?: number
}

export class QueueBackpressure {
  private readonly counts = new Map<string, Count>()
  private readonly maxAgeMs: number
  private readonly relaxedMaxAgeMs: number
  private readonly capacity: number

  constructor (private readonly options: QueueBackpressureOptions) {
    this.maxAgeMs = options.maxAgeMs ?? COUNT_MAX_AGE_MS
    this.relaxedMaxAgeMs = options.relaxedMaxAgeMs ?? RELAXED_MAX_AGE_MS
    this.capacity = options.capacity ?? 10_000
  }

  /** Whether the option's queue is full now; takes no place. Throws when the count cannot be read. */
  async isFull (ticketOptionId: string): Promise<boolean> {
    const count = await this.fresh(ticketOptionId)
    return count.waiting + count.inFlight >= this.options.maxWaiting
  }

  /** A place in the option's queue, or null when it is full. Throws when the count cannot be read. */
  async reserve (ticketOptionId: string): Promise<QueueSlot | null> {
    const count = await this.fresh(ticketOptionId)
    if (count.waiting + count.inFlight >= this.options.maxWaiting) return null
    count.inFlight++
    let settled = false
    return {
      keep: () => {
        if (settled) return
        settled = true
        count.inFlight--
        count.waiting++
        count.kept++
      },
      release: () => {
        if (settled) return
        settled = true
        count.inFlight--
      },
    }
  }

  private async fresh (ticketOptionId: string): Promise<Count> {
    let count = this.counts.get(ticketOptionId)
    if (count === undefined) {
      if (this.counts.size >= this.capacity) this.counts.clear()
      count = { waiting: 0, inFlight: 0, kept: 0, readAt: Number.NEGATIVE_INFINITY, reading: null }
      this.counts.set(ticketOptionId, count)
    }
    const halfFull = 2 * (count.waiting + count.inFlight) >= this.options.maxWaiting
    if (Date.now() - count.readAt >= (halfFull ? this.maxAgeMs : this.relaxedMaxAgeMs)) {
      const entry = count
      const keptBefore = entry.kept
      entry.reading ??= this.options.waitingCount(ticketOptionId).then((waiting) => {
        // A job added while the read was on its way may or may not be in it: count it,
        // so the cap is never overshot (an overcount lasts until the next read).
        entry.waiting = waiting + (entry.kept - keptBefore)
        entry.readAt = Date.now()
      }).finally(() => { entry.reading = null })
      await entry.reading
    }
    return count
  }
}
