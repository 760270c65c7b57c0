/**
 * Applies purchase jobs of one option. A job carries one request, or a bundle
 * of requests an API gathered (shared/purchases/sale-request.ts). The job being
 * processed also takes the next waiting jobs of its queue, whole, while their
 * requests fit in the batch size, and applies them all in one transaction
 * under one row lock (shared with other options' batches of the moment:
 * shared/purchases/group-commit.ts), each with its own outcome, in arrival order. When those
 * jobs' turns come, their outcomes are already recorded and they only report them.
 *
 * A rejection ("not enough tickets") is a result, not a failure. No failure
 * lets a later purchase of the option overtake this one (DESIGN.md invariant 4):
 * - PostgreSQL unreachable: retried in place for WORKER_DB_RETRY_MS, then the
 *   job goes back to the head of its queue (never to `delayed`, from where the
 *   next job would be taken first) and is taken again;
 * - PostgreSQL refuses the batch (bad data, not an outage): its requests up to
 *   the job's last are tried one at a time, in line order, and one refused
 *   alone is recorded as rejected `unprocessable`, in its turn;
 * - when even that record is refused, the queue waits for this job, with an
 *   error logged on every try, until an operator acts.
 * Only a job whose data is not a purchase, or names no option, fails outright.
 */
import { UnrecoverableError, WaitingError, type Job, type Queue } from 'bullmq'
import type { Logger } from 'pino'
import { isTransientDbError, withTransaction, type Db } from '../../shared/db'
import { jobIdOf, lastLineOf, requestsOfJob, type SaleRequest } from '../../shared/purchases/sale-request'
import type { AppliedMessage } from '../../shared/purchases/purchase-outcomes'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { annotateActiveSpan, inTransactionSpan, PurchaseAttribute, requestAttributes, transactionCommitted } from '../../shared/telemetry/purchase-spans'
import { applySaleBatch, outcomeStatus, rejectUnprocessable, UnknownTicketOptionError, type SaleOutcome } from '../../shared/purchases/sale-store'
import type { WorkerMetrics } from '../monitoring/metrics'
import type { GroupCommit } from '../../shared/purchases/group-commit'

export interface PurchaseProcessorDeps {
  db: Db
  /** where a batch's transaction runs: with other options' batches of the moment (shared/purchases/group-commit.ts) */
  transactions: Pick<GroupCommit, 'run'>
  /** where outcomes are sent: inside the transaction (PostgreSQL) or after it (Redis) */
  backend: Pick<QueueBackend, 'recordApplied' | 'publishApplied' | 'publishApplying' | 'olderWaiting' | 'waitingData' | 'handBack' | 'forgetBundle' | 'directPurchases' | 'directLeaseMs'>
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

  /** The outcomes of all these requests, forgotten; undefined (and nothing forgotten) unless every one is known. */
  takeAll (jobIds: readonly string[]): SaleOutcome[] | undefined {
    if (jobIds.length === 1) {
      const one = this.take(jobIds[0] as string)
      return one === undefined ? undefined : [one]
    }
    if (!jobIds.every((id) => this.entries.has(id))) return undefined
    return jobIds.map((id) => this.take(id) as SaleOutcome)
  }
}

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/** How long a job that can neither be applied nor recorded waits before it is tried again (ms). */
export const STUCK_RETRY_MS = 2000

/** How often a worker looks again at a direct lease it waits for (ms); a lease usually lasts one transaction. */
export const DIRECT_LEASE_POLL_MS = 2

/** Why the processor gives the job back to the head of its queue instead of an outcome. */
class HandBack extends Error {
  override name = 'HandBack'
}

export function createPurchaseProcessor (queue: Queue, deps: PurchaseProcessorDeps) {
  const { db, backend, batchSize, log } = deps

  /**
   * The batch of the held job's requests, in arrival (line) order: with the
   * requests of the next waiting jobs (whole jobs, while they fit in the batch
   * size; a bundle counts its requests), and any that arrived before them but
   * wait behind (handed back or recovered from a stalled worker to the tail
   * of the queue, as BullMQ's PostgreSQL backend does). Those are looked for
   * only when the held job does not start at the next line number this
   * process expects.
   */
  async function batchOf (held: readonly SaleRequest[]): Promise<SaleRequest[]> {
    const [head] = held
    if (head === undefined) return []
    const room = batchSize - held.length
    // The queue's global concurrency is 1, so nobody else takes these while we hold the head job.
    const [jobs, older] = await Promise.all([
      room <= 0 ? [] : backend.waitingData(queue, room),
      head.line !== undefined && head.line > deps.recent.lastApplied(head.ticketOptionId) + 1 ? backend.olderWaiting(queue, head.line, batchSize) : [],
    ])
    const byId = new Map<string, SaleRequest>(held.map((r) => [jobIdOf(r), r]))
    const take = (data: unknown): void => {
      for (const r of requestsOfJob(data) ?? []) {
        if (r.ticketOptionId === head.ticketOptionId && !byId.has(jobIdOf(r))) byId.set(jobIdOf(r), r)
      }
    }
    for (const data of older) take(data)
    // A prefix of the waiting jobs: taking a later job without an earlier one would let it overtake.
    let left = room
    for (const data of jobs) {
      const size = requestsOfJob(data)?.length ?? 1
      if (size > left) break
      left -= size
      take(data)
    }
    // Requests of older code carry no line: they came first.
    return [...byId.values()].sort((a, b) => (a.line ?? 0) - (b.line ?? 0))
  }

  /**
   * Waits while an API holds the option's direct lease
   * (api/purchasing/direct-sales.ts): it was granted before this job became
   * active, so its batch comes first. True when there was one to wait for.
   */
  async function waitOutDirectLease (ticketOptionId: string, jobLog: Logger): Promise<boolean> {
    if (!backend.directPurchases) return false
    let waited = false
    for (;;) {
      const ms = await backend.directLeaseMs(ticketOptionId)
      if (ms <= 0) return waited
      if (!waited && jobLog.isLevelEnabled('debug')) jobLog.debug({ leaseMs: ms }, 'waiting for an API\'s direct batch')
      waited = true
      await sleep(Math.min(ms, DIRECT_LEASE_POLL_MS))
    }
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
      const applied = await deps.transactions.run(async (client) => {
        const batch = await requests()
        const message = appliedMessage(ticketOptionId, batch, await applySaleBatch(client, ticketOptionId, batch))
        await backend.recordApplied(client, message)
        return { batch, message }
      })
      const statuses = applied.message.outcomes.map(outcomeStatus)
      deps.metrics?.batchApplied(Number(process.hrtime.bigint() - began) / 1e9, statuses)
      transactionCommitted(span, held, applied.batch, applied.message.outcomes, outcomeStatus, startTime)
      return applied
    }), jobLog)
  }

  /**
   * The outcomes of the batch. A batch PostgreSQL refuses is tried again one
   * request at a time, in line order, up to the held job's last request (one
   * bad purchase must not sink its neighbours); one refused alone is recorded
   * as rejected. `batchRead()` is what the first try read: the batch, or the
   * held requests when the read itself failed.
   */
  async function decide (held: readonly SaleRequest[], batchRead: () => readonly SaleRequest[], requests: () => Promise<SaleRequest[]>, jobLog: Logger): Promise<Applied> {
    const [head] = held as [SaleRequest]
    try {
      return await applyBatch(head, head.ticketOptionId, requests, jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err }, 'PostgreSQL refused the batch; applying its requests one at a time')
    }
    const lastHeld = lastLineOf(held)
    const heldIds = new Set(held.map(jobIdOf))
    const batch = batchRead()
    const alone = batch.filter((r) => heldIds.has(jobIdOf(r)) || (lastHeld !== null && r.line !== undefined && r.line <= lastHeld))
    const outcomes: SaleOutcome[] = []
    for (const request of alone) outcomes.push(...(await decideAlone(request, jobLog)).message.outcomes)
    return { batch: alone, message: appliedMessage(head.ticketOptionId, alone, outcomes) }
  }

  /** One request in a transaction of its own; recorded as rejected (unprocessable) when PostgreSQL refuses it. */
  async function decideAlone (request: SaleRequest, jobLog: Logger): Promise<Applied> {
    try {
      return await applyBatch(request, request.ticketOptionId, async () => [request], jobLog)
    } catch (err) {
      if (err instanceof HandBack || err instanceof UnknownTicketOptionError) throw err
      jobLog.error({ err, id: jobIdOf(request) }, 'PostgreSQL refused the purchase; recording it as rejected (unprocessable)')
    }
    try {
      return await retryingOutages(async () => {
        const message = appliedMessage(request.ticketOptionId, [request], [await rejectUnprocessable(db, request)])
        await withTransaction(db, async (client) => { await backend.recordApplied(client, message) })
        return { batch: [request], message }
      }, jobLog)
    } catch (err) {
      if (err instanceof HandBack) throw err
      jobLog.error({ err, id: jobIdOf(request) }, 'the purchase can be neither applied nor recorded; its option\'s queue waits for it')
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

  /**
   * Applies the job's request (or a bundle's requests) with a batch, and
   * returns its outcome (a bundle: one per request, in order).
   */
  return async function processPurchase (job: Job, token?: string): Promise<SaleOutcome | SaleOutcome[]> {
    const held = requestsOfJob(job.data)
    const [data] = held ?? []
    if (held === null || data === undefined) throw new UnrecoverableError(`job ${job.id ?? '?'} does not hold purchase data`)
    const bundled = (job.data as { kind?: unknown }).kind === 'bundle'
    const heldIds = held.map(jobIdOf)
    // Before the child logger: under load most jobs end here, and a pino child costs a serialization.
    const early = deps.recent.takeAll(heldIds)
    if (early !== undefined) {
      annotateActiveSpan(() => ({ ...requestAttributes(data), [PurchaseAttribute.outcome]: outcomeStatus(early[0] as SaleOutcome), 'purchase.applied_in_earlier_batch': true }))
      // Debug only (one line per purchase is too many at info in a sale); keeps reqId so a purchase can be followed.
      if (log.isLevelEnabled('debug')) log.debug({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId, status: early.map(outcomeStatus) }, 'applied in an earlier batch')
      if (bundled) forget(data.ticketOptionId, heldIds)
      return bundled ? early : early[0] as SaleOutcome // applied and published with an earlier job's batch
    }
    const jobLog = log.child({ jobId: job.id, reqId: data.requestId, ticketOptionId: data.ticketOptionId })

    // Read the next waiting jobs from Redis while the transaction begins in
    // PostgreSQL: one round trip less per purchase at low load (bench `latency`).
    // The first attempt uses this read; a retry reads the queue again.
    let prefetched: Promise<SaleRequest[]> | undefined = batchOf(held)
    prefetched.catch(() => {}) // awaited in the transaction; a failure before that is not "unhandled"
    let batchRead: readonly SaleRequest[] = held
    const requests = async (): Promise<SaleRequest[]> => {
      const next = prefetched ?? batchOf(held)
      prefetched = undefined
      const batch = await next
      batchRead = batch
      // Buyers batched behind the head read position 0 while it runs (the head reads 0
      // anyway: nothing is ahead of it). Not awaited; a lost message only delays that.
      const applyingLine = batch.length > 1 ? lastLineOf(batch) : null
      if (applyingLine !== null) backend.publishApplying(data.ticketOptionId, applyingLine).catch(() => {})
      return batch
    }
    try {
      // A direct batch that failed is queued at the head before its lease ends: read the batch again.
      if (await waitOutDirectLease(data.ticketOptionId, jobLog)) prefetched = undefined
    } catch (err) {
      return await handBack(job, token, jobLog, err)
    }
    let applied: Applied
    try {
      applied = await decide(held, () => batchRead, requests, jobLog)
    } catch (err) {
      if (err instanceof UnknownTicketOptionError) throw new UnrecoverableError(err.message)
      if (!(err instanceof HandBack) || token === undefined) throw err
      return await handBack(job, token, jobLog, err.cause ?? err)
    }
    const { outcomes } = applied.message
    const byId = new Map(outcomes.map((o) => [o.id, o]))
    const own = heldIds.map((id) => byId.get(id))
    // Published even for outcomes recorded before (a redelivered job), since
    // the first worker may have died between COMMIT and publishing.
    try {
      deps.metrics?.requestsDecided(data.ticketOptionId, applied.batch.map((r) => r.enqueuedAt))
      deps.recent.noteApplied(data.ticketOptionId, applied.message.appliedLine)
      const heldSet = new Set(heldIds)
      for (const outcome of outcomes) if (!heldSet.has(outcome.id)) deps.recent.remember(outcome)
      await backend.publishApplied(applied.message)
    } catch (err) {
      // Waiters fall back to reading PostgreSQL; the purchases are committed
      // either way, and the batched jobs publish again when their turn comes.
      jobLog.warn({ err }, 'could not publish purchase outcomes')
    }
    if (own.some((o) => o === undefined)) return await handBack(job, token, jobLog, new Error('a request of the job was not applied'))
    const ownOutcomes = own as SaleOutcome[]
    if (bundled) forget(data.ticketOptionId, heldIds)
    annotateActiveSpan(() => ({ ...requestAttributes(data), [PurchaseAttribute.outcome]: outcomeStatus(ownOutcomes[0] as SaleOutcome), [PurchaseAttribute.batchSize]: outcomes.length }))
    if (jobLog.isLevelEnabled('debug')) {
      for (const [i, request] of held.entries()) {
        const kind = request.kind ?? 'purchase'
        const outcome = ownOutcomes[i] as SaleOutcome
        jobLog.debug({ ...(kind === 'purchase' ? { purchaseId: outcome.id } : { id: outcome.id }), reqId: request.requestId, status: outcomeStatus(outcome), batch: outcomes.length }, `${kind} applied`)
      }
    }
    return bundled ? ownOutcomes : ownOutcomes[0] as SaleOutcome
  }

  /** Drops an applied bundle's requests from the bundle index (not awaited: a leftover entry names a finished job, which reads as not pending). */
  function forget (ticketOptionId: string, memberIds: readonly string[]): void {
    backend.forgetBundle(ticketOptionId, memberIds).catch((err: unknown) => { log.warn({ err, ticketOptionId }, 'could not forget an applied bundle') })
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
