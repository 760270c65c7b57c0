/**
 * One purchase request, from HTTP to outcome: check the option exists, add the
 * job to the option's queue, wait for the worker's outcome up to the wait
 * limit, and fall back to the recorded outcome in PostgreSQL before saying
 * "pending". The API never answers with an outcome it does not know.
 */
import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { Db } from '../shared/db'
import type { PurchaseJobData } from '../shared/purchase-job'
import { claimIdempotencyKey, purchaseRequestHash, releaseIdempotencyKey } from '../shared/idempotency-keys'
import { findPurchase, NOT_QUEUED, voidUnqueuedPurchase, type PurchaseRecord } from '../shared/purchases'
import { commandNeverSent } from '../shared/redis'
import { ticketOptionExists } from '../shared/ticket-options'
import { QueueFullError, ServiceUnavailableError } from './errors'
import type { OutcomeWaiter } from './outcome-waiter'
import type { PurchaseQueues } from './purchase-queues'
import type { QueueBackpressure, QueueSlot } from './queue-backpressure'

export type PurchaseResult =
  | { kind: 'option_not_found' }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending', purchaseId: string }
  /** the Idempotency-Key was used before with another quantity (422) */
  | { kind: 'idempotency_key_reused' }

export type PurchaseStatusResult =
  | { kind: 'option_not_found' }
  | { kind: 'purchase_not_found' }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending' }

export interface PurchaseInput {
  ticketOptionId: string
  userId: string
  quantity: number
  requestId: string
  /** the Idempotency-Key header, when the client sent one */
  idempotencyKey?: string
}

/** How many times a request tries to claim an Idempotency-Key whose owner let it go meanwhile. */
const IDEMPOTENCY_CLAIM_ATTEMPTS = 3

/**
 * Ids of options known to exist. Options are never deleted, so a positive
 * answer can be kept; a negative one never is (the option may be created next).
 */
export class KnownOptions {
  private readonly ids = new Set<string>()
  constructor (private readonly capacity = 100_000) {}
  has (id: string): boolean { return this.ids.has(id) }
  add (id: string): void {
    if (this.ids.size >= this.capacity) this.ids.clear()
    this.ids.add(id)
  }
}

export interface PurchaseServiceDeps {
  db: Db
  queues: PurchaseQueues
  waiter: OutcomeWaiter
  knownOptions: KnownOptions
  waitMs: number
  log: Logger
  /** hours an Idempotency-Key is remembered */
  idempotencyKeyTtlHours: number
  /** the cap on each option's queue; absent: no cap */
  backpressure?: QueueBackpressure
  /** told of every answer to a purchase that reached a queue (metrics); absent: nobody listens */
  observer?: PurchaseObserver
}

/** Sees each purchase's answer once; called in line with the request, so it must only count in memory. */
export interface PurchaseObserver {
  purchaseAnswered: (outcome: 'succeeded' | 'rejected' | 'pending', enqueuedAt: number) => void
}

/** The job data of a purchase (never the idempotency key: jobs only carry what the worker applies). */
function jobData (input: PurchaseInput, purchaseId: string): PurchaseJobData {
  return {
    purchaseId,
    ticketOptionId: input.ticketOptionId,
    userId: input.userId,
    quantity: input.quantity,
    requestId: input.requestId,
    enqueuedAt: Date.now(),
  }
}

export class PurchaseService {
  constructor (private readonly deps: PurchaseServiceDeps) {}

  async optionExists (ticketOptionId: string): Promise<boolean> {
    const { db, knownOptions } = this.deps
    if (knownOptions.has(ticketOptionId)) return true
    const exists = await ticketOptionExists(db, ticketOptionId)
    if (exists) knownOptions.add(ticketOptionId)
    return exists
  }

  async purchase (input: PurchaseInput): Promise<PurchaseResult> {
    // Never create a queue (or any Redis key) for an id nobody created.
    if (!await this.optionExists(input.ticketOptionId)) return { kind: 'option_not_found' }
    // Before any other work, so a full queue costs one comparison in memory.
    const slot = await this.reserveSlot(input.ticketOptionId)
    try {
      if (input.idempotencyKey !== undefined) return await this.purchaseOnce(input, input.idempotencyKey, slot)
      return await this.enqueueAndWait(jobData(input, randomUUID()), slot, null)
    } finally {
      slot.release() // no job was added by this request (does nothing once kept)
    }
  }

  /** A place in the option's queue, or 503 QUEUE_FULL (503 SERVICE_UNAVAILABLE when Redis cannot say). */
  private async reserveSlot (ticketOptionId: string): Promise<QueueSlot> {
    const { backpressure, log } = this.deps
    if (backpressure === undefined) return { keep: () => {}, release: () => {} }
    let slot
    try {
      slot = await backpressure.reserve(ticketOptionId)
    } catch (err) {
      log.warn({ err, ticketOptionId }, 'could not read the queue length')
      throw new ServiceUnavailableError('The purchase queue')
    }
    if (slot === null) throw new QueueFullError()
    return slot
  }

  /**
   * Adds a new purchase's job and waits for its outcome. `key` is the
   * Idempotency-Key this request claimed for it, if any: when the add fails,
   * the purchase is voided in PostgreSQL (other requests with the key may
   * have added the same job meanwhile, see `follow`) and the key is let go,
   * so the 503 stays true and a retry starts afresh.
   */
  private async enqueueAndWait (data: PurchaseJobData, slot: QueueSlot, key: string | null): Promise<PurchaseResult> {
    const { queues, waiter, waitMs, log } = this.deps
    const wait = waiter.wait(data.purchaseId, waitMs)
    try {
      await queues.enqueue(data)
      slot.keep()
    } catch (err) {
      wait.cancel()
      log.warn({ err, purchaseId: data.purchaseId }, 'could not enqueue purchase')
      // Redis may have stored the job before the connection dropped: void it
      // in PostgreSQL so the 503 stays true, or answer what a worker recorded first.
      if (!commandNeverSent(err) || key !== null) {
        try {
          const recorded = await voidUnqueuedPurchase(this.deps.db, data)
          if (recorded !== null) return this.answered({ kind: 'recorded', purchase: recorded }, data.enqueuedAt)
        } catch (voidErr) {
          log.error({ err: voidErr, purchaseId: data.purchaseId }, 'could not void a purchase whose enqueue failed')
          // Its fate is unknown: never claim nothing was bought.
          return this.answered({ kind: 'pending', purchaseId: data.purchaseId }, data.enqueuedAt)
        }
      }
      if (key !== null) {
        await releaseIdempotencyKey(this.deps.db, { ticket_option_id: data.ticketOptionId, user_id: data.userId, key, purchase_id: data.purchaseId })
          .catch((releaseErr: unknown) => { log.warn({ err: releaseErr, purchaseId: data.purchaseId }, 'could not let an idempotency key go') })
      }
      throw new ServiceUnavailableError('The purchase queue')
    }
    return this.answered(await this.outcome(data.ticketOptionId, data.purchaseId, await wait.promise), data.enqueuedAt)
  }

  /**
   * A purchase with an Idempotency-Key (API.md): the request whose key row
   * PostgreSQL inserts creates the purchase; every other request with the key
   * answers that purchase's outcome, or 422 when its quantity differs.
   */
  private async purchaseOnce (input: PurchaseInput, key: string, slot: QueueSlot): Promise<PurchaseResult> {
    const { db, idempotencyKeyTtlHours } = this.deps
    const requestHash = purchaseRequestHash(input.quantity)
    for (let attempt = 1; attempt <= IDEMPOTENCY_CLAIM_ATTEMPTS; attempt++) {
      const purchaseId = randomUUID()
      const claim = await claimIdempotencyKey(db, {
        ticketOptionId: input.ticketOptionId, userId: input.userId, key, requestHash, purchaseId, ttlHours: idempotencyKeyTtlHours,
      })
      if (claim.kind === 'claimed') return await this.enqueueAndWait(jobData(input, purchaseId), slot, key)
      if (claim.kind === 'vanished') continue
      if (claim.row.request_hash !== requestHash) return { kind: 'idempotency_key_reused' }
      slot.release() // this request adds no new purchase
      const followed = await this.follow(input, claim.row.purchase_id)
      if (followed !== null) return followed
      // The key's purchase was never queued (its enqueue failed and it was voided): start afresh.
      await releaseIdempotencyKey(db, claim.row)
    }
    throw new ServiceUnavailableError('The purchase queue')
  }

  /**
   * The outcome of a purchase another request created with the same key; null
   * when that purchase was voided because it never reached a queue. When it
   * is neither recorded nor queued (the API that claimed the key died before
   * it enqueued, or has not enqueued yet), its job is added again: the job id
   * is the purchase id, so an existing job is left alone, and should the first
   * request's enqueue fail after all, it voids the purchase, and this job buys nothing.
   */
  private async follow (input: PurchaseInput, purchaseId: string): Promise<PurchaseResult | null> {
    const { db, waiter, waitMs, log } = this.deps
    // Registered before anything is read, so an outcome published from now on is not missed.
    const wait = waiter.wait(purchaseId, waitMs)
    let recorded: PurchaseRecord | null
    try {
      recorded = await findPurchase(db, input.ticketOptionId, purchaseId)
      if (recorded === null && !await this.requeue(input, purchaseId)) {
        wait.cancel() // Redis is down: no outcome will arrive; answer from PostgreSQL now
        recorded = await findPurchase(db, input.ticketOptionId, purchaseId)
      }
    } catch (err) {
      wait.cancel()
      throw err
    }
    if (recorded === null) {
      recorded = await wait.promise ?? await findPurchase(db, input.ticketOptionId, purchaseId)
    } else {
      wait.cancel()
    }
    if (recorded === null) return { kind: 'pending', purchaseId }
    if (recorded.status === 'rejected' && recorded.reason === NOT_QUEUED) {
      log.info({ purchaseId }, 'the purchase of an idempotency key was never queued')
      return null
    }
    return { kind: 'recorded', purchase: recorded }
  }

  /** Makes sure the purchase's job is queued; false when Redis could not be asked. */
  private async requeue (input: PurchaseInput, purchaseId: string): Promise<boolean> {
    const { queues, log } = this.deps
    try {
      if (await queues.jobState(input.ticketOptionId, purchaseId) === 'pending') return true
      await queues.enqueue(jobData(input, purchaseId))
      return true
    } catch (err) {
      log.warn({ err, purchaseId }, 'could not check or re-add the job of an idempotency key')
      return false
    }
  }

  private answered (result: PurchaseResult, enqueuedAt: number): PurchaseResult {
    if (result.kind === 'pending') this.deps.observer?.purchaseAnswered('pending', enqueuedAt)
    else if (result.kind === 'recorded') this.deps.observer?.purchaseAnswered(result.purchase.status === 'rejected' ? 'rejected' : 'succeeded', enqueuedAt)
    return result
  }

  /** The outcome that arrived, else the one recorded meanwhile, else "pending". */
  private async outcome (ticketOptionId: string, purchaseId: string, arrived: PurchaseRecord | null): Promise<PurchaseResult> {
    const purchase = arrived ?? await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    return purchase === null ? { kind: 'pending', purchaseId } : { kind: 'recorded', purchase }
  }

  async status (ticketOptionId: string, purchaseId: string): Promise<PurchaseStatusResult> {
    if (!await this.optionExists(ticketOptionId)) return { kind: 'option_not_found' }
    const recorded = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    if (recorded !== null) return { kind: 'recorded', purchase: recorded }
    let state
    try {
      state = await this.deps.queues.jobState(ticketOptionId, purchaseId)
    } catch (err) {
      this.deps.log.warn({ err, purchaseId }, 'could not read purchase job state')
      throw new ServiceUnavailableError('The purchase queue')
    }
    if (state === 'pending') return { kind: 'pending' }
    // The job may have completed between the two reads.
    const late = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    return late === null ? { kind: 'purchase_not_found' } : { kind: 'recorded', purchase: late }
  }
}
