/**
 * Applies purchase jobs of one option. The job being processed also takes the
 * next waiting purchases of its queue (up to the batch size) and applies them
 * all in one transaction under one row lock, each with its own outcome, in
 * arrival order. When those jobs' turns come, their outcome is already
 * recorded and they only report it.
 *
 * A rejection ("not enough tickets") is a result, not a failure. Only
 * infrastructure errors throw, after retrying in place for a while: retrying
 * in place keeps the option's queue in order, where a failed job would let
 * the next one overtake it.
 */
import { UnrecoverableError, type Job, type Queue } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { isTransientDbError, withTransaction, type Db } from '../shared/db'
import { isPurchaseJobData, type PurchaseJobData } from '../shared/purchase-job'
import { publishOutcomes } from '../shared/purchase-outcomes'
import { applyPurchases, UnknownTicketOptionError, type PurchaseRecord } from '../shared/purchases'
import type { WorkerMetrics } from './metrics'

export interface PurchaseProcessorDeps {
  db: Db
  /** connection used to publish outcomes */
  publisher: Redis
  prefix: string
  batchSize: number
  dbRetryMs: number
  log: Logger
  /** true once the worker is shutting down: stop retrying and hand the job back */
  isClosing: () => boolean
  /** outcomes this process recorded ahead of their jobs' turn (see RecentOutcomes) */
  recent: RecentOutcomes
  /** batch timings and sizes for GET /metrics (absent: not measured) */
  metrics?: WorkerMetrics
}

/** Outcomes recorded in a batch before their own job ran; bounded, oldest dropped first. */
export class RecentOutcomes {
  private readonly entries = new Map<string, PurchaseRecord>()
  constructor (private readonly capacity = 50_000) {}
  remember (record: PurchaseRecord): void {
    this.entries.set(record.id, record)
    if (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value
      if (oldest !== undefined) this.entries.delete(oldest)
    }
  }

  /** Returns and forgets the outcome: each job needs it once. */
  take (purchaseId: string): PurchaseRecord | undefined {
    const record = this.entries.get(purchaseId)
    if (record !== undefined) this.entries.delete(purchaseId)
    return record
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

export function createPurchaseProcessor (queue: Queue, deps: PurchaseProcessorDeps) {
  const { db, publisher, prefix, batchSize, log } = deps

  async function nextWaiting (head: PurchaseJobData): Promise<PurchaseJobData[]> {
    if (batchSize <= 1) return []
    // The queue's global concurrency is 1, so nobody else takes these while we hold the head job.
    const jobs = await queue.getJobs(['wait'], 0, batchSize - 2, true)
    const batch: PurchaseJobData[] = []
    for (const job of jobs) {
      const data: unknown = job.data
      if (isPurchaseJobData(data) && data.ticketOptionId === head.ticketOptionId && data.purchaseId !== head.purchaseId) batch.push(data)
    }
    return batch
  }

  /** `requests` is called inside each attempt's transaction, so a retry can read the queue again. */
  async function applyWithRetry (ticketOptionId: string, requests: () => Promise<PurchaseJobData[]>, jobLog: Logger): Promise<PurchaseRecord[]> {
    const started = Date.now()
    for (let attempt = 1; ; attempt++) {
      try {
        // Timed from BEGIN to COMMIT (the batch read from Redis overlaps with BEGIN).
        const began = process.hrtime.bigint()
        const applied = await withTransaction(db, async (client) => await applyPurchases(client, ticketOptionId, await requests()))
        deps.metrics?.batchApplied(Number(process.hrtime.bigint() - began) / 1e9, applied.outcomes)
        return applied.outcomes
      } catch (err) {
        deps.metrics?.batchFailures.inc()
        if (err instanceof UnknownTicketOptionError) throw new UnrecoverableError(err.message)
        if (!isTransientDbError(err) || deps.isClosing() || Date.now() - started >= deps.dbRetryMs) throw err
        jobLog.warn({ err, attempt }, 'PostgreSQL unavailable, retrying purchase')
        await sleep(Math.min(100 * 2 ** attempt, 2000))
      }
    }
  }

  return async function processPurchase (job: Job): Promise<PurchaseRecord> {
    const data: unknown = job.data
    if (!isPurchaseJobData(data)) throw new UnrecoverableError(`job ${job.id ?? '?'} does not hold purchase data`)
    // Before the child logger: under load most jobs end here, and a pino child costs a serialization.
    const early = deps.recent.take(data.purchaseId)
    if (early !== undefined) {
      // Debug only (one line per purchase is too many at info in a sale); keeps reqId so a purchase can be followed.
      if (log.isLevelEnabled('debug')) log.debug({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId, purchaseId: early.id, status: early.status }, 'purchase applied in an earlier batch')
      return early // applied and published with an earlier job's batch
    }
    const jobLog = log.child({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId })

    // Read the next waiting jobs from Redis while the transaction begins in
    // PostgreSQL: one round trip less per purchase at low load (bench `latency`).
    // The first attempt uses this read; a retry reads the queue again.
    let prefetched: Promise<PurchaseJobData[]> | undefined = nextWaiting(data)
    prefetched.catch(() => {}) // awaited in the transaction; a failure before that is not "unhandled"
    const requests = async (): Promise<PurchaseJobData[]> => {
      const next = prefetched ?? nextWaiting(data)
      prefetched = undefined
      return [data, ...await next]
    }
    const outcomes = await applyWithRetry(data.ticketOptionId, requests, jobLog)
    // Published even for outcomes recorded before (a redelivered job), since
    // the first worker may have died between COMMIT and publishing.
    try {
      await publishOutcomes(publisher, prefix, outcomes)
      for (const outcome of outcomes.slice(1)) deps.recent.remember(outcome)
    } catch (err) {
      // Waiters fall back to reading PostgreSQL; the purchases are committed
      // either way, and the batched jobs publish again when their turn comes.
      jobLog.warn({ err }, 'could not publish purchase outcomes')
    }
    const own = outcomes[0] as PurchaseRecord
    if (jobLog.isLevelEnabled('debug')) jobLog.debug({ purchaseId: own.id, status: own.status, batch: outcomes.length }, 'purchase applied')
    return own
  }
}
