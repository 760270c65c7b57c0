/**
 * Reads how many purchase jobs wait and run in the option queues, for
 * GET /metrics. Read on scrape only, never per request, and bounded three ways
 * so that neither the queue store nor Prometheus suffers in a sale with many
 * options: only the `scanned` most recently used options of the registry of
 * active options are read, in one round trip (the queue backend's
 * `queueCounts`); only the `top` deepest of them get a series of their own
 * (the label set stays small); and the read gives up after `timeoutMs`, so an
 * outage makes /metrics report `purchase_queue_depth_up 0` instead of hanging.
 * test/api/metrics.test.ts checks the counts agree with getJobCounts.
 */
import type { QueueBackend } from '../../shared/queues/queue-backend'

/** Most recently used options read per scrape: one pipelined round trip of 4 small commands each. */
export const QUEUE_DEPTH_SCANNED = 200
/** Options with a series of their own, so the label set stays small. */
export const QUEUE_DEPTH_TOP = 10
/** A scrape waits this long for Redis at most (ms); Prometheus' own timeout is 10 s by default. */
export const QUEUE_DEPTH_TIMEOUT_MS = 500

export type QueueState = 'waiting' | 'active' | 'delayed'
export const QUEUE_STATES: readonly QueueState[] = ['waiting', 'active', 'delayed']

export interface OptionQueueDepth {
  ticketOptionId: string
  waiting: number
  active: number
  delayed: number
}

export interface QueueDepthSnapshot {
  /** options in the registry of active options */
  registered: number
  /** the deepest queues (waiting + active + delayed), deepest first, at most `top`; empty ones too when there is room */
  deepest: OptionQueueDepth[]
  /** sums over every option read (the `scanned` most recently used) */
  total: Record<QueueState, number>
}

export interface QueueDepthsOptions {
  backend: Pick<QueueBackend, 'recentOptions' | 'queueCounts'>
  /** how many of the most recently used options are read */
  scanned: number
  /** how many of them get a series of their own */
  top: number
  /** the whole read gives up after this long (ms) */
  timeoutMs: number
}

async function within<T> (promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => { reject(new Error(`queue depths not read within ${timeoutMs} ms`)) }, timeoutMs)
  })
  promise.catch(() => {}) // may reject after the race is lost
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export class QueueDepths {
  constructor (private readonly options: QueueDepthsOptions) {}

  /** One snapshot; rejects when the store fails or does not answer within `timeoutMs`. */
  async read (): Promise<QueueDepthSnapshot> {
    return await within(this.readNow(), this.options.timeoutMs)
  }

  private async readNow (): Promise<QueueDepthSnapshot> {
    const { backend, scanned, top } = this.options
    // Most recently used first: those are the queues a sale fills.
    const { registered, ids } = await backend.recentOptions(scanned)
    const counts = await backend.queueCounts(ids)
    const total: Record<QueueState, number> = { waiting: 0, active: 0, delayed: 0 }
    const depths = ids.map((ticketOptionId, i): OptionQueueDepth => {
      const depth = { ticketOptionId, ...(counts[i] ?? { waiting: 0, active: 0, delayed: 0 }) }
      for (const state of QUEUE_STATES) total[state] += depth[state]
      return depth
    })
    const size = (d: OptionQueueDepth): number => d.waiting + d.active + d.delayed
    const deepest = depths.sort((a, b) => size(b) - size(a)).slice(0, top)
    return { registered, deepest, total }
  }
}
