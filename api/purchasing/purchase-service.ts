/**
 * One purchase request, from HTTP to outcome: check the option exists and the
 * quantity is within MAX_TICKETS_PER_PURCHASE, add the job to the option's
 * queue, wait for the worker's outcome up to the wait limit, and fall back to
 * the recorded outcome in PostgreSQL before saying "pending". The API never
 * answers with an outcome it does not know.
 */
import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import { QueueFullError, ServiceUnavailableError } from '../../shared/error-catalogue'
import { claimIdempotencyKey, purchaseRequestHash, releaseIdempotencyKey } from '../../shared/idempotency-keys'
import { exceedsQuantityLimit } from '../../shared/purchases/allocation'
import type { NewPurchase, PurchaseRequest } from '../../shared/purchases/purchase-request'
import { findPurchase, NOT_QUEUED, voidUnqueuedPurchase, type PurchaseRecord } from '../../shared/purchases/purchase-store'
import { commandNeverSent } from '../../shared/redis'
import { ticketOptionExists } from '../../shared/ticket-options'
import { KnownOptions } from './known-options'
import type { OutcomeWaiter } from './outcome-waiter'
import type { PurchaseQueues } from './purchase-queues'
import type { QueueBackpressure } from './queue-backpressure'

export type PurchaseResult =
  | { kind: 'option_not_found' }
  /** more than MAX_TICKETS_PER_PURCHASE (422); nothing was queued */
  | { kind: 'quantity_over_limit', limit: number }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending', purchaseId: string }
  /** the Idempotency-Key was used before with another quantity (422) */
  | { kind: 'idempotency_key_reused' }

export type PurchaseStatusResult =
  | { kind: 'option_not_found' }
  | { kind: 'purchase_not_found' }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending' }

/** How many times a request tries to claim an Idempotency-Key whose owner let it go meanwhile. */
const IDEMPOTENCY_CLAIM_ATTEMPTS = 3

export interface PurchaseServiceDeps {
  db: Db
  queues: PurchaseQueues
  waiter: OutcomeWaiter
  waitMs: number
  log: Logger
  /** hours an Idempotency-Key is remembered */
  idempotencyKeyTtlHours: number
  /** MAX_TICKETS_PER_PURCHASE */
  maxTicketsPerPurchase: number
  /** the cap on each option's queue; absent: no cap */
  backpressure?: QueueBackpressure
  /** told of every answer to a purchase that reached a queue (metrics); absent: nobody listens */
  observer?: PurchaseObserver
}

/** Sees each purchase's answer once; called in line with the request, so it must only count in memory. */
export interface PurchaseObserver {
  purchaseAnswered: (outcome: 'succeeded' | 'rejected' | 'pending', enqueuedAt: number) => void
}

/** The add failed before anything reached Redis: nothing can be queued under this purchase id by this request. */
class NothingQueuedError extends Error {
  override name = 'NothingQueuedError'
}

export class PurchaseService {
  private readonly knownOptions = new KnownOptions()

  constructor (private readonly deps: PurchaseServiceDeps) {}

  /** MAX_TICKETS_PER_PURCHASE, which a QUANTITY_OVER_LIMIT answer names */
  get maxTicketsPerPurchase (): number {
    return this.deps.maxTicketsPerPurchase
  }

  async optionExists (ticketOptionId: string): Promise<boolean> {
    if (this.knownOptions.has(ticketOptionId)) return true
    const exists = await ticketOptionExists(this.deps.db, ticketOptionId)
    if (exists) this.knownOptions.add(ticketOptionId)
    return exists
  }

  async purchase (purchase: NewPurchase, idempotencyKey?: string): Promise<PurchaseResult> {
    const { maxTicketsPerPurchase, backpressure } = this.deps
    if (exceedsQuantityLimit(purchase.quantity, maxTicketsPerPurchase)) return { kind: 'quantity_over_limit', limit: maxTicketsPerPurchase }
    // Never create a queue (or any Redis key) for an id nobody created.
    if (!await this.optionExists(purchase.ticketOptionId)) return { kind: 'option_not_found' }
    // Before any database work, so a full queue costs one comparison in memory;
    // the place itself is taken when the job is added (addJob).
    if (backpressure !== undefined && await this.queueIsFull(backpressure, purchase.ticketOptionId)) throw new QueueFullError()
    if (idempotencyKey !== undefined) return await this.purchaseOnce(purchase, idempotencyKey)
    return await this.enqueueAndWait(newRequest(purchase, randomUUID()), null)
  }

  /** Whether the option's queue is full; a Redis that cannot say is a 503. */
  private async queueIsFull (backpressure: QueueBackpressure, ticketOptionId: string): Promise<boolean> {
    try {
      return await this.readQueueCount(async () => await backpressure.isFull(ticketOptionId), ticketOptionId)
    } catch {
      throw new ServiceUnavailableError('The purchase queue')
    }
  }

  /** A read of the queue's length; when Redis cannot say, nothing was queued (a 503 SERVICE_UNAVAILABLE). */
  private async readQueueCount<T> (read: () => Promise<T>, ticketOptionId: string): Promise<T> {
    try {
      return await read()
    } catch (err) {
      this.deps.log.warn({ err, ticketOptionId }, 'could not read the queue length')
      throw new NothingQueuedError('the queue length could not be read', { cause: err })
    }
  }

  /**
   * Adds a purchase's job. The one place a queue slot lives: a place in the
   * option's queue is taken for the add, kept when the job is added and given
   * back otherwise. Throws QueueFullError or NothingQueuedError when nothing
   * reached Redis, or the add's own error when Redis may have stored the job.
   */
  private async addJob (request: PurchaseRequest): Promise<void> {
    const { queues, backpressure } = this.deps
    const slot = backpressure === undefined
      ? undefined
      : await this.readQueueCount(async () => await backpressure.reserve(request.ticketOptionId), request.ticketOptionId)
    if (slot === null) throw new QueueFullError()
    try {
      await queues.enqueue(request)
      slot?.keep()
    } catch (err) {
      throw commandNeverSent(err) ? new NothingQueuedError('the add was never sent', { cause: err }) : err
    } finally {
      slot?.release() // does nothing once kept
    }
  }

  /**
   * Adds a new purchase's job and waits for its outcome. `key` is the
   * Idempotency-Key this request claimed for it, if any.
   */
  private async enqueueAndWait (request: PurchaseRequest, key: string | null): Promise<PurchaseResult> {
    const wait = this.deps.waiter.wait(request.purchaseId, this.deps.waitMs)
    try {
      await this.addJob(request)
    } catch (err) {
      wait.cancel()
      return await this.notQueued(request, key, err)
    }
    return this.answered(await this.outcome(request.ticketOptionId, request.purchaseId, await wait.promise), request.enqueuedAt)
  }

  /**
   * After a failed add. When Redis may have stored the job, or when another
   * request with the same key may add it meanwhile (see `follow`), the
   * purchase is voided in PostgreSQL, so the 503 stays true, unless a worker
   * recorded an outcome first, which is then the answer. A claimed key is let
   * go, so a retry starts afresh.
   */
  private async notQueued (request: PurchaseRequest, key: string | null, err: unknown): Promise<PurchaseResult> {
    const { db, log } = this.deps
    const nothingQueued = err instanceof NothingQueuedError || err instanceof QueueFullError
    if (!(err instanceof QueueFullError)) log.warn({ err, purchaseId: request.purchaseId }, 'could not enqueue purchase')
    if (!nothingQueued || key !== null) {
      try {
        const recorded = await voidUnqueuedPurchase(db, request)
        if (recorded !== null) return this.answered({ kind: 'recorded', purchase: recorded }, request.enqueuedAt)
      } catch (voidErr) {
        log.error({ err: voidErr, purchaseId: request.purchaseId }, 'could not void a purchase whose enqueue failed')
        // Its fate is unknown: never claim nothing was bought.
        return this.answered({ kind: 'pending', purchaseId: request.purchaseId }, request.enqueuedAt)
      }
    }
    if (key !== null) {
      await releaseIdempotencyKey(db, { ticket_option_id: request.ticketOptionId, user_id: request.userId, key, purchase_id: request.purchaseId })
        .catch((releaseErr: unknown) => { log.warn({ err: releaseErr, purchaseId: request.purchaseId }, 'could not let an idempotency key go') })
    }
    throw err instanceof QueueFullError ? err : new ServiceUnavailableError('The purchase queue')
  }

  /**
   * A purchase with an Idempotency-Key (API.md): the request whose key row
   * PostgreSQL inserts creates the purchase; every other request with the key
   * answers that purchase's outcome, or 422 when its quantity differs.
   */
  private async purchaseOnce (purchase: NewPurchase, key: string): Promise<PurchaseResult> {
    const { db, idempotencyKeyTtlHours } = this.deps
    const requestHash = purchaseRequestHash(purchase.quantity)
    for (let attempt = 1; attempt <= IDEMPOTENCY_CLAIM_ATTEMPTS; attempt++) {
      const purchaseId = randomUUID()
      const claim = await claimIdempotencyKey(db, {
        ticketOptionId: purchase.ticketOptionId, userId: purchase.userId, key, requestHash, purchaseId, ttlHours: idempotencyKeyTtlHours,
      })
      if (claim.kind === 'claimed') return await this.enqueueAndWait(newRequest(purchase, purchaseId), key)
      if (claim.kind === 'vanished') continue
      if (claim.row.request_hash !== requestHash) return { kind: 'idempotency_key_reused' }
      const followed = await this.follow(newRequest(purchase, claim.row.purchase_id))
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
  private async follow (request: PurchaseRequest): Promise<PurchaseResult | null> {
    const { db, waiter, waitMs, log } = this.deps
    const { ticketOptionId, purchaseId } = request
    // Registered before anything is read, so an outcome published from now on is not missed.
    const wait = waiter.wait(purchaseId, waitMs)
    let recorded: PurchaseRecord | null
    try {
      recorded = await findPurchase(db, ticketOptionId, purchaseId)
      if (recorded === null && !await this.requeue(request)) {
        wait.cancel() // Redis is down: no outcome will arrive; answer from PostgreSQL now
        recorded = await findPurchase(db, ticketOptionId, purchaseId)
      }
    } catch (err) {
      wait.cancel()
      throw err
    }
    if (recorded === null) {
      recorded = await wait.promise ?? await findPurchase(db, ticketOptionId, purchaseId)
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

  /**
   * Makes sure the purchase's job is queued; false when Redis could not be
   * asked. Takes no place in the queue: the request that claimed the key did.
   */
  private async requeue (request: PurchaseRequest): Promise<boolean> {
    const { queues, log } = this.deps
    try {
      if (await queues.jobState(request.ticketOptionId, request.purchaseId) === 'pending') return true
      await queues.enqueue(request)
      return true
    } catch (err) {
      log.warn({ err, purchaseId: request.purchaseId }, 'could not check or re-add the job of an idempotency key')
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

/** The request a new purchase becomes once it has an id; enqueuedAt is now. */
function newRequest (purchase: NewPurchase, purchaseId: string): PurchaseRequest {
  return {
    purchaseId,
    ticketOptionId: purchase.ticketOptionId,
    userId: purchase.userId,
    quantity: purchase.quantity,
    requestId: purchase.requestId,
    enqueuedAt: Date.now(),
  }
}
