/**
 * The direct path: an option with nobody in line needs no queue. When a
 * request comes for an option whose queue is empty, the API takes the
 * option's lease and line numbers in one Redis script (shared/queues/
 * direct-lease.ts) and applies the request itself, in a transaction of the
 * same sale-store code a worker runs (shared with other options' batches of
 * the moment: group-commit.ts), then advances the applied line and drops the
 * lease (put off for a few milliseconds, so the option's next claim here can do it:
 * putOffRelease) and announces the outcome (outcome-announcer.ts). A buyer
 * then pays one script and one transaction, not the queue's per-job path
 * (about 40 Redis commands and four to six round trips).
 *
 * Requests of one option that arrive while its batch is in flight gather and
 * go as the next batch (batched-calls.ts). Everything else is as before:
 * - while a lease lives, other requests of the option (another API's, or ones
 *   that arrive here between batches) queue behind it with later line
 *   numbers, and no worker starts a batch of the option until the lease ends
 *   (purchase-processor.ts). A lease is granted only while nothing of the
 *   option waits or runs in its queue, so arrival order holds (invariant 4);
 * - a batch that fails (PostgreSQL down, refused, or slower than half the
 *   lease) is rolled back and queued at the head of the option's queue with
 *   its line numbers, before the lease is dropped: a worker applies it, first;
 * - an API that dies mid-batch: the lease expires (DIRECT_LEASE_MS) and the
 *   worker goes on; the batch committed or left nothing (one transaction);
 * - the fence: the batch commits only if it holds the option's row lock
 *   before half the lease is gone. A worker that waited out the lease then
 *   waits on that row lock, so it can never apply a later request first.
 *
 * A lone batch (no other transaction of this API running or waiting) of new
 * purchases goes at once when this API knows how the option stands (it left
 * it so, in its last committed batch): the claim first, then the whole
 * transaction in one round trip, decided before anything is read and written
 * only if the option is still so (sale-store.ts applyPurchasesAtOnce). When
 * the option changed meanwhile (another API or a worker sold), the batch goes
 * the usual way, and the option does not go at once again for a while
 * (AT_ONCE_PAUSE_MS): it is shared.
 *
 * Such a batch that comes while this API still holds the option's lease from
 * its last batch (the release put off) needs no claim: its statement also
 * checks that no request queued under that lease (its fence: direct-fences.ts)
 * and otherwise writes nothing, and the batch goes the usual way, behind them
 * (applyOnHeldLease). A single buyer then pays one PostgreSQL round trip and
 * no Redis one, as the direct design does.
 */
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import type { Logger } from 'pino'
import type { DedicatedConnection } from '../../shared/db'
import type { GroupCommit } from '../../shared/purchases/group-commit'
import type { AppliedMessage } from '../../shared/purchases/purchase-outcomes'
import type { OptionState } from '../../shared/purchases/sale-rules'
import { isPurchaseRequest, jobIdOf, type PurchaseRequest, type SaleRequest } from '../../shared/purchases/sale-request'
import { applyPurchasesAtOnce, applySaleBatchIf, outcomeStatus, type SaleOutcome } from '../../shared/purchases/sale-store'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import type { PutOffRelease } from '../../shared/queues/direct-lease'
import { inTransactionSpan, transactionCommitted } from '../../shared/telemetry/purchase-spans'
import { BatchedCalls } from './batched-calls'
import { OutcomeAnnouncer } from './outcome-announcer'
import type { PurchaseQueues } from './purchase-queues'

export type DirectResult =
  /** applied and committed here */
  | { kind: 'applied', outcome: SaleOutcome }
  /** the option has a line (or Redis could not say): queue it as usual */
  | { kind: 'declined' }
  /** its batch failed after the lease was taken: queued at the head of the option's queue under this line number */
  | { kind: 'queued', line: number }

export interface DirectSalesDeps {
  /** a backend with direct purchases advances a batch's applied line in releaseDirect, and publishes with publishApplied */
  backend: Pick<QueueBackend, 'claimDirect' | 'releaseDirect' | 'publishApplied'>
  transactions: Pick<GroupCommit, 'run' | 'idle'>
  /** where a lone batch goes at once (applyPurchasesAtOnce); absent: every batch goes through `transactions` */
  atOnce?: DedicatedConnection
  queues: Pick<PurchaseQueues, 'enqueueAhead'>
  leaseMs: number
  /** how long outcomes wait to be announced with others (outcome-announcer.ts); absent: ANNOUNCE_DELAY_MS */
  announceDelayMs?: number
  /** how long a committed batch's release waits for the option's next claim (putOffRelease); absent: RELEASE_PUT_OFF_MS */
  releasePutOffMs?: number
  /** most requests in one direct transaction (WORKER_BATCH_SIZE, as a worker's batch) */
  maxBatch: number
  log: Logger
  /** counts each direct batch by how it ended (metrics); absent: nobody counts */
  onBatch?: (result: 'applied' | 'declined' | 'queued', requests: number) => void
}

/** The batch held the row lock too late: a worker may have gone on after the lease. */
export class LeaseRunningOutError extends Error {
  override name = 'LeaseRunningOutError'
}

/** Options remembered as recently declined, or as this API left them, at most. */
const OPTIONS_REMEMBERED = 10_000
/** How long a direct batch's outcomes wait to be announced with others' (outcome-announcer.ts). */
const ANNOUNCE_DELAY_MS = 10
/**
 * How long a committed batch's release waits for the option's next claim here
 * to carry it (putOffRelease). 1 ms was too short on a busy machine: a single
 * buyer's next purchase came later than that for up to a third of purchases,
 * each of which then paid a claim and a release (up to 2.9 Redis commands a
 * purchase against 0.2 when quiet). Someone else's request queued meanwhile
 * waits at most this much longer.
 */
const RELEASE_PUT_OFF_MS = 3
/** How long an option whose batch found it changed by someone else does not go at once. */
const AT_ONCE_PAUSE_MS = 1000

export class DirectSales {
  private readonly batches = new BatchedCalls<SaleRequest, DirectResult>((ticketOptionId, requests) => this.applyGathered(ticketOptionId, requests))

  /** Options whose last claim here was declined (a hint: forgotten at OPTIONS_REMEMBERED). */
  private readonly declinedLately = new Set<string>()
  /** Each option as this API's last committed batch of it left it (forgotten at OPTIONS_REMEMBERED). */
  private readonly leftAs = new Map<string, OptionState>()
  /** Options that someone else sold from lately: until when they do not go at once. */
  private readonly sharedUntil = new Map<string, number>()
  /** Releases put off until the option's next claim here, or until `due` (putOffRelease); each lease held meanwhile. */
  private readonly putOff = new Map<string, HeldLease>()
  private releaseTimer: NodeJS.Timeout | undefined
  /** A batch at once in flight: the next one goes with the group instead. */
  private atOnceInFlight = false
  private readonly announcer: OutcomeAnnouncer
  /** A line per request applied, at debug; read once (an app built with `logger: false` has no levels). */
  private readonly logsEach: boolean

  constructor (private readonly deps: DirectSalesDeps) {
    this.logsEach = typeof deps.log.isLevelEnabled === 'function' && deps.log.isLevelEnabled('debug')
    this.announcer = new OutcomeAnnouncer(async (message) => { await deps.backend.publishApplied(message) }, deps.announceDelayMs ?? ANNOUNCE_DELAY_MS, deps.log)
  }

  /** Sends the releases put off, announces the outcomes still pending, and closes the connection of the batches at once (`atOnce`). */
  async close (): Promise<void> {
    await Promise.all(this.releaseDue(true))
    await this.announcer.flush()
    await this.deps.atOnce?.end()
  }

  /**
   * Applies the request here when its option has nobody in line. Rejects
   * only when its batch failed and could not be queued either (Redis down):
   * the caller then answers as for a failed add.
   */
  apply (request: SaleRequest): Promise<DirectResult> {
    return this.batches.call(request.ticketOptionId, request)
  }

  /**
   * The requests gathered, in chunks of at most `maxBatch`, one after the
   * other; once one is declined (the option has a line now) the rest are
   * too, so none of them overtakes a request that went to the queue.
   */
  private async applyGathered (ticketOptionId: string, requests: SaleRequest[]): Promise<DirectResult[]> {
    // One chunk (a lone buyer's every batch): no loop, no results to gather.
    if (requests.length <= this.deps.maxBatch) return await this.applyBatch(ticketOptionId, requests)
    const results: DirectResult[] = []
    for (let i = 0; i < requests.length; i += this.deps.maxBatch) {
      const chunk = requests.slice(i, i + this.deps.maxBatch)
      if (results.some((r) => r.kind !== 'applied')) {
        this.deps.onBatch?.('declined', chunk.length)
        results.push(...chunk.map((): DirectResult => ({ kind: 'declined' })))
      } else {
        results.push(...await this.applyBatch(ticketOptionId, chunk))
      }
    }
    return results
  }

  private async applyBatch (ticketOptionId: string, requests: SaleRequest[]): Promise<DirectResult[]> {
    const onHeldLease = await this.applyOnHeldLease(ticketOptionId, requests)
    if (onHeldLease !== null) return onHeldLease
    const { backend, leaseMs, log } = this.deps
    const token = randomUUID()
    // Measured from before the claim is sent, so never shorter than what Redis counts.
    const started = performance.now()
    const putOff = this.takePutOffRelease(ticketOptionId)
    const claiming = backend.claimDirect(ticketOptionId, requests.length, leaseMs, token, putOff).catch((err: unknown) => {
      log.warn({ err, ticketOptionId }, 'could not claim the direct lease; queueing')
      // Perhaps not done: sent on its own (done twice, it changes nothing).
      if (putOff !== undefined) void this.release(ticketOptionId, putOff)
      return null
    })
    const declined = (): DirectResult[] => {
      if (this.declinedLately.size >= OPTIONS_REMEMBERED) this.declinedLately.clear()
      this.declinedLately.add(ticketOptionId)
      this.deps.onBatch?.('declined', requests.length)
      return requests.map(() => ({ kind: 'declined' }))
    }
    // The claim goes out beside the transaction's lock and reads, and is awaited
    // before the write; an option whose last claim here was declined probably has
    // a line: its claim is awaited first, so its row is not locked for nothing.
    if (this.declinedLately.has(ticketOptionId) && await claiming === null) return declined()
    const expected = this.atOnceState(ticketOptionId, requests)
    let committed: Committed | null
    try {
      const atOnce = expected === null ? 'not tried' : await this.commitAtOnce(ticketOptionId, requests as PurchaseRequest[], expected, started, claiming)
      committed = atOnce === 'not tried' || atOnce === 'stale' ? await this.commit(ticketOptionId, requests, started, claiming) : atOnce
    } catch (err) {
      // Failed before the claim was answered, or after it was granted: the claim decides.
      const first = await claiming
      if (first === null) return declined()
      return await this.queueInstead(ticketOptionId, token, numberedFrom(requests, first), err)
    }
    if (committed === null) return declined()
    this.declinedLately.delete(ticketOptionId)
    this.putOffRelease(ticketOptionId, { token, appliedLine: committed.message.appliedLine, claimedAt: started })
    return this.answered(ticketOptionId, committed)
  }

  /**
   * A lone batch of purchases on the lease this API still holds from the
   * option's last batch (its release put off): no claim, one statement,
   * which writes nothing once a request has queued under the lease
   * (direct-fences.ts), so none is passed. The lease is used so for a quarter
   * of its time at most: the statement still has a quarter to take the row
   * lock before half the lease is gone (the fence a worker relies on). Null
   * when the batch was not applied so: it goes the usual way, whose claim
   * carries the release.
   */
  private async applyOnHeldLease (ticketOptionId: string, requests: SaleRequest[]): Promise<DirectResult[] | null> {
    const held = this.putOff.get(ticketOptionId)
    if (held === undefined || performance.now() - held.claimedAt > this.deps.leaseMs / 4) return null
    const expected = this.atOnceState(ticketOptionId, requests)
    if (expected === null) return null
    // Out of the map meanwhile: the timer must not release the lease under the statement.
    this.takePutOffRelease(ticketOptionId)
    let committed: Committed | 'stale' | 'fenced' | 'failed'
    this.atOnceInFlight = true
    try {
      committed = await this.statementAtOnce(ticketOptionId, requests as PurchaseRequest[], expected, held.claimedAt, held.token)
    } catch (err) {
      // Late, or PostgreSQL failed: the usual way decides, and finds the batch recorded if it was.
      this.deps.log.warn({ err, ticketOptionId }, 'direct batch on a held lease failed; claiming')
      committed = 'failed'
    } finally {
      this.atOnceInFlight = false
    }
    if (typeof committed === 'string') {
      this.putOff.set(ticketOptionId, held)
      return null
    }
    this.putOffRelease(ticketOptionId, held)
    return this.answered(ticketOptionId, committed)
  }

  /** A committed batch: its outcomes announced, counted, logged and answered. */
  private answered (ticketOptionId: string, committed: Committed): DirectResult[] {
    const { log } = this.deps
    const { batch, message: applied } = committed
    // The outcomes are announced with others of these milliseconds; the line advances with the release.
    this.announcer.add(applied)
    this.deps.onBatch?.('applied', batch.length)
    const byId = new Map(applied.outcomes.map((o) => [o.id, o]))
    if (this.logsEach) {
      // As a worker logs a purchase it applied, with the request id: one purchase can be followed either way.
      for (const request of batch) {
        const kind = request.kind ?? 'purchase'
        const id = jobIdOf(request)
        const outcome = byId.get(id)
        log.debug({ ...(kind === 'purchase' ? { purchaseId: id } : { id }), reqId: request.requestId, ticketOptionId, status: outcome === undefined ? 'unknown' : outcomeStatus(outcome), batch: batch.length, line: request.line }, `${kind} applied directly`)
      }
    }
    return batch.map((r) => ({ kind: 'applied', outcome: byId.get(jobIdOf(r)) as SaleOutcome }))
  }

  /**
   * The batch's transaction, with the claim in flight beside its lock and
   * reads: null when the claim was declined (nothing written). Throws
   * LeaseRunningOutError (rolled back) when the row lock came too late.
   */
  private async commit (ticketOptionId: string, requests: SaleRequest[], started: number, claiming: Promise<number | null>): Promise<Committed | null> {
    const { transactions, leaseMs } = this.deps
    const [head] = requests as [SaleRequest]
    return await inTransactionSpan(head, async (span) => {
      const startTime = Date.now()
      let after: OptionState | null = null
      const committed = await transactions.run(async (client): Promise<Committed | null> => {
        const outcomes = await applySaleBatchIf(client, ticketOptionId, requests, async () => {
          if (await claiming === null) return false
          // The row is locked by now: checked before anything is written.
          if (performance.now() - started > leaseMs / 2) throw new LeaseRunningOutError('the option\'s row was locked after half the direct lease')
          return true
        }, (state) => { after = state })
        if (outcomes === null) return null
        return appliedBatch(ticketOptionId, numberedFrom(requests, await claiming as number), outcomes)
      })
      if (committed !== null) {
        if (after !== null) this.remember(ticketOptionId, after)
        transactionCommitted(span, head, committed.batch, committed.message.outcomes, outcomeStatus, startTime)
      }
      return committed
    })
  }

  /** How the option stands, when this batch may go at once (see the top of this file); null: it goes with the group. */
  private atOnceState (ticketOptionId: string, requests: readonly SaleRequest[]): OptionState | null {
    if (this.deps.atOnce === undefined || this.atOnceInFlight || !this.deps.transactions.idle) return null
    const state = this.leftAs.get(ticketOptionId)
    if (state === undefined || state.maxPerUser !== null || !requests.every(isPurchaseRequest)) return null
    const until = this.sharedUntil.get(ticketOptionId)
    if (until !== undefined) {
      if (performance.now() < until) return null
      this.sharedUntil.delete(ticketOptionId)
    }
    return state
  }

  /**
   * The batch at once, once the claim is granted: null when it was declined;
   * 'stale' when the option was not as expected (nothing written: the caller
   * goes the usual way). Throws LeaseRunningOutError (nothing written) when
   * the row lock came too late.
   */
  private async commitAtOnce (ticketOptionId: string, requests: PurchaseRequest[], expected: OptionState, started: number, claiming: Promise<number | null>): Promise<Committed | null | 'stale'> {
    this.atOnceInFlight = true
    try {
      // Nothing is sent before the claim is granted: the statement commits on its own.
      const first = await claiming
      if (first === null) return null
      const committed = await this.statementAtOnce(ticketOptionId, numberedFrom(requests, first), expected, started, null)
      // Only a batch on a held lease can find its fence up.
      return committed === 'fenced' ? 'stale' : committed
    } finally {
      this.atOnceInFlight = false
    }
  }

  /**
   * The statement of a batch at once (applyPurchasesAtOnce) on the lease
   * claimed at `started` (`fencedBy`: its token, when the lease is held from
   * an earlier batch). 'stale': the option was not as expected; 'fenced': a
   * request queued under the lease; nothing written either way. Throws
   * LeaseRunningOutError (nothing written) when the row lock came too late.
   */
  private async statementAtOnce (ticketOptionId: string, batch: PurchaseRequest[], expected: OptionState, started: number, fencedBy: string | null): Promise<Committed | 'stale' | 'fenced'> {
    const { atOnce, leaseMs } = this.deps
    const [head] = batch as [PurchaseRequest]
    return await inTransactionSpan(head, async (span) => {
      const startTime = Date.now()
      // PostgreSQL measures from the statement's start; what went before it is taken off here.
      const result = await applyPurchasesAtOnce(atOnce as DedicatedConnection, ticketOptionId, batch, expected, leaseMs / 2 - (performance.now() - started), fencedBy)
      if (result.kind === 'late') throw new LeaseRunningOutError('the option\'s row was locked after half the direct lease')
      if (result.kind === 'fenced') return 'fenced'
      if (result.kind === 'stale') {
        this.remember(ticketOptionId, result.found)
        this.sharedUntil.set(ticketOptionId, performance.now() + AT_ONCE_PAUSE_MS)
        return 'stale'
      }
      this.remember(ticketOptionId, result.after)
      const committed = appliedBatch(ticketOptionId, batch, result.outcomes)
      transactionCommitted(span, head, batch, result.outcomes, outcomeStatus, startTime)
      return committed
    })
  }

  /**
   * A committed batch's release waits `releasePutOffMs` for the option's
   * next claim here, which does it first in the same script: a buyer who
   * comes back at once costs Redis one round trip, not two. Meanwhile the
   * lease is held (others queue, a worker waits), as during a batch.
   */
  private putOffRelease (ticketOptionId: string, lease: Omit<HeldLease, 'due'>): void {
    const putOffMs = this.deps.releasePutOffMs ?? RELEASE_PUT_OFF_MS
    // Field by field: a property after a spread takes Node 20's slow path (about 0.6 µs), on every purchase here.
    this.putOff.set(ticketOptionId, { token: lease.token, appliedLine: lease.appliedLine, claimedAt: lease.claimedAt, due: performance.now() + putOffMs })
    if (this.releaseTimer === undefined) this.armReleaseTimer(putOffMs)
  }

  private takePutOffRelease (ticketOptionId: string): PutOffRelease | undefined {
    const release = this.putOff.get(ticketOptionId)
    if (release === undefined) return undefined
    this.putOff.delete(ticketOptionId)
    // The timer stays: a single buyer's next batch puts a release off again within it, and
    // clearing and setting a timer per batch cost more than its firing once for nothing.
    return { token: release.token, appliedLine: release.appliedLine }
  }

  /** Sends the releases whose time is up (`all`: every one); the timer comes back for the next one due. */
  private releaseDue (all = false): Array<Promise<void>> {
    clearTimeout(this.releaseTimer)
    this.releaseTimer = undefined
    const now = performance.now()
    const sent: Array<Promise<void>> = []
    let next = Infinity
    for (const [ticketOptionId, release] of this.putOff) {
      if (all || release.due <= now) {
        this.putOff.delete(ticketOptionId)
        sent.push(this.release(ticketOptionId, release))
      } else {
        next = Math.min(next, release.due)
      }
    }
    if (next !== Infinity) this.armReleaseTimer(next - now)
    return sent
  }

  private armReleaseTimer (ms: number): void {
    this.releaseTimer = setTimeout(() => { this.releaseDue() }, Math.max(1, ms))
    this.releaseTimer.unref()
  }

  private async release (ticketOptionId: string, { token, appliedLine }: PutOffRelease): Promise<void> {
    await this.deps.backend.releaseDirect(ticketOptionId, token, appliedLine).catch((err: unknown) => {
      // The lease then expires on its own; until then the option's requests queue.
      this.deps.log.warn({ err, ticketOptionId }, 'could not release the direct lease')
    })
  }

  private remember (ticketOptionId: string, state: OptionState): void {
    if (this.leftAs.size >= OPTIONS_REMEMBERED) this.leftAs.clear()
    if (this.sharedUntil.size >= OPTIONS_REMEMBERED) this.sharedUntil.clear()
    this.leftAs.set(ticketOptionId, state)
  }

  /**
   * After a failed batch: queued at the head of the option's queue with its
   * line numbers, then the lease dropped, so the worker that waited for it
   * applies these first. When even that fails, every request of the batch
   * gets the error (a failed add: the caller voids it, or finds it committed).
   */
  private async queueInstead (ticketOptionId: string, token: string, batch: SaleRequest[], why: unknown): Promise<DirectResult[]> {
    const { backend, queues, log } = this.deps
    log.warn({ err: why, ticketOptionId, requests: batch.length }, 'direct batch failed; queueing it')
    try {
      await queues.enqueueAhead(batch)
    } finally {
      await backend.releaseDirect(ticketOptionId, token, null).catch((err: unknown) => {
        log.warn({ err, ticketOptionId }, 'could not release the direct lease')
      })
    }
    this.deps.onBatch?.('queued', batch.length)
    return batch.map((r) => ({ kind: 'queued', line: r.line as number }))
  }
}

/** A lease this API holds after a committed batch, its release put off (putOffRelease). */
interface HeldLease extends PutOffRelease {
  /** when its claim was sent (performance.now()) */
  claimedAt: number
  /** when the release goes out unless a claim here carries it first */
  due: number
}

/** A committed direct batch: its requests with their line numbers, and the message that tells the APIs. */
interface Committed {
  batch: SaleRequest[]
  message: Omit<AppliedMessage, 'type'>
}

/** A committed batch and the message that tells the APIs of it. */
function appliedBatch (ticketOptionId: string, batch: SaleRequest[], outcomes: SaleOutcome[]): Committed {
  return { batch, message: { ticketOptionId, appliedLine: (batch[batch.length - 1] as SaleRequest).line ?? null, count: batch.length, at: Date.now(), outcomes } }
}

/** The requests with consecutive line numbers from `first`, as the claim handed them out. */
function numberedFrom<R extends SaleRequest> (requests: readonly R[], first: number): R[] {
  return requests.map((r, i) => ({ ...r, line: first + i }))
}
