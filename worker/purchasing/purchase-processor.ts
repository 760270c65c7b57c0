/**
 * Applies purchase jobs of one option. The job being processed also takes the
 * next waiting purchases of its queue (up to the batch size) and applies them
 * all in one transaction under one row lock, each with its own outcome, in
 * arrival order. When those jobs' turns come, their outcome is already
 * recorded and they only report it.
 *
 * A rejection ("not enough tickets") is a result, not a failure. No failure
 * lets a later purchase of the option overtake this one (DESIGN.md invariant 4):
 * - PostgreSQL unreachable: retried in place for WORKER_DB_RETRY_MS, then the
 *   job goes back to the head of its queue (never to `delayed`, from where the
 *   next job would be taken first) and is taken again;
 * - PostgreSQL refuses the batch (bad data, not an outage): the head is tried
 *   alone, and when it is refused alone it is recorded as rejected
 *   `unprocessable`, in its turn;
 * - when even that record is refused, the queue waits for this job, with an
 *   error logged on every try, until an operator acts.
 * Only a job whose data is not a purchase, or names no option, fails outright.
 */
import { UnrecoverableError, WaitingError, type Job, type Queue } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { isTransientDbError, withTransaction, type Db } from '../../shared/db'
import { isSaleRequest, jobIdOf, lastLineOf, type SaleRequest } from '../../shared/purchases/sale-request'
import { publishApplied, publishApplying } from '../../shared/purchases/purchase-outcomes'
import { applySaleBatch, isChangeOutcome, rejectUnprocessable, UnknownTicketOptionError, type SaleOutcome } from '../../shared/purchases/sale-store'
import type { WorkerMetrics } from '../monitoring/metrics'

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
  private readonly entries = new Map<string, SaleOutcome>()
  constructor (private readonly capacity = 50_000) {}
  remember (record: SaleOutcome): void {
    this.entries.set(record.id, record)
    if (this.entries.size > this.capacity) {
      const oldest = this.entries.keys().next().value
      if (oldest !== undefined) this.entries.delete(oldest)
    }
  }

  /** Returns and forgets the outcome: each job needs it once. */
  take (jobId: string): SaleOutcome | undefined {
    const record = this.entries.get(jobId)
    if (record !== undefined) this.entries.delete(jobId)
    return record
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** How long a job that can neither be applied nor recorded waits before it is tried again (ms). */
export const STUCK_RETRY_MS = 2000

/** Why the processor gives the job back to the head of its queue instead of an outcome. */
class HandBack extends Error {
  override name = 'HandBack'
}

export function createPurchaseProcessor (queue: Queue, deps: PurchaseProcessorDeps) {
  const { db, publisher, prefix, batchSize, log } = deps

  async function nextWaiting (head: SaleRequest): Promise<SaleRequest[]> {
    if (batchSize <= 1) return []
    // The queue's global concurrency is 1, so nobody else takes these while we hold the head job.
    const jobs = await queue.getJobs(['wait'], 0, batchSize - 2, true)
    const headId = jobIdOf(head)
    const batch: SaleRequest[] = []
    for (const job of jobs) {
      const data: unknown = job.data
      if (isSaleRequest(data) && data.ticketOptionId === head.ticketOptionId && jobIdOf(data) !== headId) batch.push(data)
    }
    return batch
  }

  /**
   * Runs `attempt` until it succeeds, retrying in place while PostgreSQL is
   * unreachable; throws HandBack once WORKER_DB_RETRY_MS is spent or the
   * worker closes, and any other error as it is.
   */
  async function retryingOutages<T> (attempt: () => Promise<T>, jobLog: Logger): Promise<T> {
    const started = Date.now()
    for (let tries = 1; ; tries++) {
      try {
        return await attempt()
      } catch (err) {
        deps.metrics?.batchFailures.inc()
        if (!isTransientDbError(err)) throw err
        if (deps.isClosing() || Date.now() - started >= deps.dbRetryMs) throw new HandBack('PostgreSQL unavailable', { cause: err })
        jobLog.warn({ err, attempt: tries }, 'PostgreSQL unavailable, retrying purchase')
        await sleep(Math.min(100 * 2 ** tries, 2000))
      }
    }
  }

  /** One batch in one transaction; `requests` is called inside each try, so a retry reads the queue again. */
  async function applyBatch (ticketOptionId: string, requests: () => Promise<SaleRequest[]>, jobLog: Logger): Promise<SaleOutcome[]> {
    return await retryingOutages(async () => {
      // Timed from BEGIN to COMMIT (the batch read from Redis overlaps with BEGIN).
      const began = process.hrtime.bigint()
      const outcomes = await withTransaction(db, async (client) => await applySaleBatch(client, ticketOptionId, await requests()))
      deps.metrics?.batchApplied(Number(process.hrtime.bigint() - began) / 1e9, outcomes.map(outcomeStatus))
      return outcomes
    }, jobLog)
  }

  /**
   * The outcomes of the head and of the purchases applied with it. A batch
   * PostgreSQL refuses is tried again with the head alone (one bad purchase
   * must not sink its neighbours); a head refused alone is recorded as rejected.
   */
  async function decide (head: SaleRequest, requests: () => Promise<SaleRequest[]>, jobLog: Logger): Promise<SaleOutcome[]> {
    try {
      return await applyBatch(head.ticketOptionId, requests, jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err }, 'PostgreSQL refused the batch; applying the purchase alone')
    }
    try {
      return await applyBatch(head.ticketOptionId, async () => [head], jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err }, 'PostgreSQL refused the purchase; recording it as rejected (unprocessable)')
    }
    try {
      return [await retryingOutages(async () => await rejectUnprocessable(db, head), jobLog)]
    } catch (err) {
      if (err instanceof HandBack) throw err
      jobLog.error({ err }, 'the purchase can be neither applied nor recorded; its option\'s queue waits for it')
      await sleep(STUCK_RETRY_MS)
      throw new HandBack('neither applied nor recorded', { cause: err })
    }
  }

  return async function processPurchase (job: Job, token?: string): Promise<SaleOutcome> {
    const data: unknown = job.data
    if (!isSaleRequest(data)) throw new UnrecoverableError(`job ${job.id ?? '?'} does not hold purchase data`)
    // Before the child logger: under load most jobs end here, and a pino child costs a serialization.
    const early = deps.recent.take(jobIdOf(data))
    if (early !== undefined) {
      // Debug only (one line per purchase is too many at info in a sale); keeps reqId so a purchase can be followed.
      if (log.isLevelEnabled('debug')) log.debug({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId, status: outcomeStatus(early) }, 'applied in an earlier batch')
      return early // applied and published with an earlier job's batch
    }
    const jobLog = log.child({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId })

    // Read the next waiting jobs from Redis while the transaction begins in
    // PostgreSQL: one round trip less per purchase at low load (bench `latency`).
    // The first attempt uses this read; a retry reads the queue again.
    let prefetched: Promise<SaleRequest[]> | undefined = nextWaiting(data)
    prefetched.catch(() => {}) // awaited in the transaction; a failure before that is not "unhandled"
    let batch: SaleRequest[] = [data]
    const requests = async (): Promise<SaleRequest[]> => {
      const next = prefetched ?? nextWaiting(data)
      prefetched = undefined
      batch = [data, ...await next]
      // Buyers batched behind the head read position 0 while it runs (the head reads 0
      // anyway: nothing is ahead of it). Not awaited; a lost message only delays that.
      const applyingLine = batch.length > 1 ? lastLineOf(batch) : null
      if (applyingLine !== null) publishApplying(publisher, prefix, data.ticketOptionId, applyingLine).catch(() => {})
      return batch
    }
    let outcomes: SaleOutcome[]
    try {
      outcomes = await decide(data, requests, jobLog)
    } catch (err) {
      if (err instanceof UnknownTicketOptionError) throw new UnrecoverableError(err.message)
      if (!(err instanceof HandBack) || token === undefined) throw err
      // Back to the head of the queue (BullMQ pushes it where the next take looks first).
      jobLog.warn({ err: err.cause ?? err }, 'purchase handed back to the head of its queue')
      await job.moveToWait(token)
      throw new WaitingError()
    }
    // Published even for outcomes recorded before (a redelivered job), since
    // the first worker may have died between COMMIT and publishing.
    try {
      // The batch that committed: the head alone when the whole batch was refused (decide).
      const applied = outcomes.length === batch.length ? batch : [data]
      deps.metrics?.requestsDecided(data.ticketOptionId, applied.map((r) => r.enqueuedAt))
      await publishApplied(publisher, prefix, { ticketOptionId: data.ticketOptionId, appliedLine: lastLineOf(applied), count: applied.length, at: Date.now(), outcomes })
      for (const outcome of outcomes.slice(1)) deps.recent.remember(outcome)
    } catch (err) {
      // Waiters fall back to reading PostgreSQL; the purchases are committed
      // either way, and the batched jobs publish again when their turn comes.
      jobLog.warn({ err }, 'could not publish purchase outcomes')
    }
    const own = outcomes[0] as SaleOutcome
    if (jobLog.isLevelEnabled('debug')) {
      const kind = data.kind ?? 'purchase'
      jobLog.debug({ ...(kind === 'purchase' ? { purchaseId: own.id } : { id: own.id }), status: outcomeStatus(own), batch: outcomes.length }, `${kind} applied`)
    }
    return own
  }
}

/** A bounded label for an outcome: a purchase's or hold's status, or what a change did. */
export function outcomeStatus (outcome: SaleOutcome): string {
  if (!isChangeOutcome(outcome)) return outcome.status
  if (!outcome.changed) return 'unchanged'
  return { confirm: 'confirmed', release: 'released', cancel: 'cancelled' }[outcome.kind]
}
