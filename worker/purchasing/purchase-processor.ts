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
import type { Logger } from 'pino'
import { isTransientDbError, withTransaction, type Db } from '../../shared/db'
import { isSaleRequest, jobIdOf, lastLineOf, type SaleRequest } from '../../shared/purchases/sale-request'
import type { AppliedMessage } from '../../shared/purchases/purchase-outcomes'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { annotateActiveSpan, inTransactionSpan, PurchaseAttribute, requestAttributes, transactionCommitted } from '../../shared/telemetry/purchase-spans'
import { applySaleBatch, outcomeStatus, rejectUnprocessable, UnknownTicketOptionError, type SaleOutcome } from '../../shared/purchases/sale-store'
import type { WorkerMetrics } from '../monitoring/metrics'

export interface PurchaseProcessorDeps {
  db: Db
  /** where outcomes are sent: inside the transaction (PostgreSQL) or after it (Redis) */
  backend: Pick<QueueBackend, 'recordApplied' | 'publishApplied' | 'publishApplying' | 'olderWaiting' | 'waitingData' | 'handBack'>
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

/**
 * Outcomes recorded in a batch before their own job ran, and the highest line
 * number this process applied per option; bounded, oldest dropped first.
 */
export class RecentOutcomes {
  private readonly entries = new Map<string, SaleOutcome>()
  private readonly lines = new Map<string, number>()
  constructor (private readonly capacity = 50_000) {}

  noteApplied (ticketOptionId: string, line: number | null): void {
    if (line === null || line <= (this.lines.get(ticketOptionId) ?? 0)) return
    this.lines.delete(ticketOptionId)
    this.lines.set(ticketOptionId, line)
    if (this.lines.size > this.capacity) this.lines.delete(this.lines.keys().next().value as string)
  }

  /** The highest line number of the option this process applied; 0 when none. */
  lastApplied (ticketOptionId: string): number {
    return this.lines.get(ticketOptionId) ?? 0
  }

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
  const { db, backend, batchSize, log } = deps

  /**
   * The batch of `head`, in arrival (line) order: the next waiting requests
   * (up to the batch size), and any that arrived before it but wait behind it
   * (handed back or recovered from a stalled worker to the tail of the queue,
   * as BullMQ's PostgreSQL backend does). Those are looked for only when
   * `head` is not the next line number this process expects.
   */
  async function batchOf (head: SaleRequest): Promise<SaleRequest[]> {
    // The queue's global concurrency is 1, so nobody else takes these while we hold the head job.
    const [jobs, older] = await Promise.all([
      batchSize <= 1 ? [] : backend.waitingData(queue, batchSize - 1),
      head.line !== undefined && head.line > deps.recent.lastApplied(head.ticketOptionId) + 1 ? backend.olderWaiting(queue, head.line, batchSize) : [],
    ])
    const byId = new Map<string, SaleRequest>([[jobIdOf(head), head]])
    for (const data of [...older, ...jobs]) {
      if (isSaleRequest(data) && data.ticketOptionId === head.ticketOptionId && !byId.has(jobIdOf(data))) byId.set(jobIdOf(data), data)
    }
    // Requests of older code carry no line: they came first.
    return [...byId.values()].sort((a, b) => (a.line ?? 0) - (b.line ?? 0))
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

  /**
   * One batch in one transaction, with the message that tells the APIs (sent
   * in the transaction on PostgreSQL); `requests` is called inside each try,
   * so a retry reads the queue again.
   */
  async function applyBatch (held: SaleRequest, ticketOptionId: string, requests: () => Promise<SaleRequest[]>, jobLog: Logger): Promise<Applied> {
    return await retryingOutages(async () => await inTransactionSpan(held, async (span) => {
      // Timed from BEGIN to COMMIT (the batch read from the queue overlaps with BEGIN).
      const began = process.hrtime.bigint()
      const startTime = Date.now()
      const applied = await withTransaction(db, async (client) => {
        const batch = await requests()
        const message = appliedMessage(ticketOptionId, batch, await applySaleBatch(client, ticketOptionId, batch))
        await backend.recordApplied(client, message)
        return { batch, message }
      })
      const statuses = applied.message.outcomes.map(outcomeStatus)
      deps.metrics?.batchApplied(Number(process.hrtime.bigint() - began) / 1e9, statuses)
      transactionCommitted(span, held, applied.batch, applied.message.outcomes, statuses, startTime)
      return applied
    }), jobLog)
  }

  /**
   * The outcomes of the batch. A batch PostgreSQL refuses is tried again with
   * its first request alone (one bad purchase must not sink its neighbours);
   * one refused alone is recorded as rejected. `first()` is the batch's first
   * request in line: the held job itself, unless an older one waited behind it.
   */
  async function decide (held: SaleRequest, first: () => SaleRequest, requests: () => Promise<SaleRequest[]>, jobLog: Logger): Promise<Applied> {
    try {
      return await applyBatch(held, first().ticketOptionId, requests, jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err }, 'PostgreSQL refused the batch; applying the purchase alone')
    }
    const head = first()
    try {
      return await applyBatch(held, head.ticketOptionId, async () => [head], jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err }, 'PostgreSQL refused the purchase; recording it as rejected (unprocessable)')
    }
    try {
      return await retryingOutages(async () => {
        const message = appliedMessage(head.ticketOptionId, [head], [await rejectUnprocessable(db, head)])
        await withTransaction(db, async (client) => { await backend.recordApplied(client, message) })
        return { batch: [head], message }
      }, jobLog)
    } catch (err) {
      if (err instanceof HandBack) throw err
      jobLog.error({ err }, 'the purchase can be neither applied nor recorded; its option\'s queue waits for it')
      await sleep(STUCK_RETRY_MS)
      throw new HandBack('neither applied nor recorded', { cause: err })
    }
  }

  /** Gives the job back to the head of its queue, to be taken again before the jobs behind it. */
  async function handBack (job: Job, token: string | undefined, jobLog: Logger, why: unknown): Promise<never> {
    if (token === undefined) throw why
    jobLog.warn({ err: why }, 'purchase handed back to the head of its queue')
    await backend.handBack(job, token)
    throw new WaitingError()
  }

  return async function processPurchase (job: Job, token?: string): Promise<SaleOutcome> {
    const data: unknown = job.data
    if (!isSaleRequest(data)) throw new UnrecoverableError(`job ${job.id ?? '?'} does not hold purchase data`)
    // Before the child logger: under load most jobs end here, and a pino child costs a serialization.
    const early = deps.recent.take(jobIdOf(data))
    if (early !== undefined) {
      annotateActiveSpan(() => ({ ...requestAttributes(data), [PurchaseAttribute.outcome]: outcomeStatus(early), 'purchase.applied_in_earlier_batch': true }))
      // Debug only (one line per purchase is too many at info in a sale); keeps reqId so a purchase can be followed.
      if (log.isLevelEnabled('debug')) log.debug({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId, status: outcomeStatus(early) }, 'applied in an earlier batch')
      return early // applied and published with an earlier job's batch
    }
    const jobLog = log.child({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId })

    // Read the next waiting jobs from Redis while the transaction begins in
    // PostgreSQL: one round trip less per purchase at low load (bench `latency`).
    // The first attempt uses this read; a retry reads the queue again.
    let prefetched: Promise<SaleRequest[]> | undefined = batchOf(data)
    prefetched.catch(() => {}) // awaited in the transaction; a failure before that is not "unhandled"
    let first: SaleRequest = data
    const requests = async (): Promise<SaleRequest[]> => {
      const next = prefetched ?? batchOf(data)
      prefetched = undefined
      const batch = await next
      first = batch[0] ?? data
      // Buyers batched behind the head read position 0 while it runs (the head reads 0
      // anyway: nothing is ahead of it). Not awaited; a lost message only delays that.
      const applyingLine = batch.length > 1 ? lastLineOf(batch) : null
      if (applyingLine !== null) backend.publishApplying(data.ticketOptionId, applyingLine).catch(() => {})
      return batch
    }
    let applied: Applied
    try {
      applied = await decide(data, () => first, requests, jobLog)
    } catch (err) {
      if (err instanceof UnknownTicketOptionError) throw new UnrecoverableError(err.message)
      if (!(err instanceof HandBack) || token === undefined) throw err
      return await handBack(job, token, jobLog, err.cause ?? err)
    }
    const { outcomes } = applied.message
    const ownId = jobIdOf(data)
    const own = outcomes.find((o) => o.id === ownId)
    // Published even for outcomes recorded before (a redelivered job), since
    // the first worker may have died between COMMIT and publishing.
    try {
      deps.metrics?.requestsDecided(data.ticketOptionId, applied.batch.map((r) => r.enqueuedAt))
      deps.recent.noteApplied(data.ticketOptionId, applied.message.appliedLine)
      for (const outcome of outcomes) if (outcome.id !== ownId) deps.recent.remember(outcome)
      await backend.publishApplied(applied.message)
    } catch (err) {
      // Waiters fall back to reading PostgreSQL; the purchases are committed
      // either way, and the batched jobs publish again when their turn comes.
      jobLog.warn({ err }, 'could not publish purchase outcomes')
    }
    // Only an older request, applied alone after its batch was refused: this one waits its turn again.
    if (own === undefined) return await handBack(job, token, jobLog, new Error('an older request was applied alone first'))
    annotateActiveSpan(() => ({ ...requestAttributes(data), [PurchaseAttribute.outcome]: outcomeStatus(own), [PurchaseAttribute.batchSize]: outcomes.length }))
    if (jobLog.isLevelEnabled('debug')) {
      const kind = data.kind ?? 'purchase'
      jobLog.debug({ ...(kind === 'purchase' ? { purchaseId: own.id } : { id: own.id }), status: outcomeStatus(own), batch: outcomes.length }, `${kind} applied`)
    }
    return own
  }
}

/** A committed batch: the requests it applied (the head alone when the batch was refused) and their message. */
interface Applied {
  batch: SaleRequest[]
  message: Omit<AppliedMessage, 'type'>
}

function appliedMessage (ticketOptionId: string, batch: SaleRequest[], outcomes: SaleOutcome[]): Omit<AppliedMessage, 'type'> {
  return { ticketOptionId, appliedLine: lastLineOf(batch), count: batch.length, at: Date.now(), outcomes }
}
