/**
 * Every request that changes what an option has available, from HTTP to
 * outcome (API.md, contract version 2): purchases and holds, and the
 * confirmations, releases and cancellations that follow them. Each is checked
 * (the option exists, the quantity is within its max_per_purchase), added to
 * the option's queue, and its outcome awaited up to the wait limit; failing
 * that, the recorded outcome is read from PostgreSQL before the answer says
 * "pending". The API never answers with an outcome it does not know.
 */
import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import { QueueFullError, ServiceUnavailableError } from '../../shared/error-catalogue'
import { claimIdempotencyKey, holdRequestHash, purchaseRequestHash, releaseIdempotencyKey } from '../../shared/idempotency-keys'
import { exceedsQuantityLimit } from '../../shared/purchases/sale-rules'
import {
  jobIdOf, type CancelRequest, type ConfirmRequest, type HoldRequest, type NewHold, type NewPurchase, type PurchaseRequest, type ReleaseRequest, type SaleRequest,
} from '../../shared/purchases/sale-request'
import {
  findPurchase, findReservation, isChangeOutcome, NOT_QUEUED, outcomeStatus, voidUnqueued, type PurchaseRecord, type ReservationRecord, type SaleOutcome,
} from '../../shared/purchases/sale-store'
import { currentTraceContext, inSpan, PurchaseAttribute, PurchaseSpan, requestAttributes } from '../../shared/telemetry/purchase-spans'
import { createTicketOption, ticketOptionLimits, type NewTicketOption, type TicketOption, type TicketOptionLimits } from '../../shared/ticket-options'
import { KnownOptions } from './known-options'
import type { DirectFences } from './direct-fences'
import type { DirectSales } from './direct-sales'
import type { OutcomeWait, OutcomeWaiter } from './outcome-waiter'
import type { PurchaseQueues } from './purchase-queues'
import type { QueueBackpressure } from './queue-backpressure'
import type { LineSnapshot, Place, QueueLine } from './queue-line'

/** The answer to a purchase (T = PurchaseRecord) or a hold (T = ReservationRecord). */
export type SubmitResult<T> =
  | { kind: 'option_not_found' }
  /** more than the option's max_per_purchase (422); nothing was queued */
  | { kind: 'quantity_over_limit', limit: number }
  /** the outcome; a rejection carries its reason, to be answered with the option's limits */
  | { kind: 'recorded', record: T, limits: TicketOptionLimits }
  /** queued, outcome not known yet (202); where it stands in line, when known */
  | { kind: 'pending', id: string, place: Place | null }
  /** the Idempotency-Key was used before with another request (422) */
  | { kind: 'idempotency_key_reused' }

/** What the queue path answers; submitNew adds the option's limits to a recorded outcome. */
type QueuedResult<T> =
  | { kind: 'recorded', record: T }
  | Extract<SubmitResult<T>, { kind: 'pending' | 'idempotency_key_reused' }>

/**
 * Where a request went: applied at once (the direct path, where nobody waits for a message), or
 * queued under its line number, with its wait for the outcome (null: nobody waits). `late`: the
 * wait began after the request was queued (its direct batch failed and was queued instead), so
 * its outcome may have been told before.
 */
type Sent = { kind: 'applied', outcome: SaleOutcome } | { kind: 'queued', ticket: number, wait: OutcomeWait | null, late: boolean }

/** The answer to a confirmation, release or cancellation. */
export type ChangeResult =
  | { kind: 'option_not_found' }
  /** no such reservation or purchase for this user (404) */
  | { kind: 'not_found' }
  /** this request changed it (confirm: 201; release, cancel: 200) */
  | { kind: 'changed', reservation: ReservationRecord | null, purchase: PurchaseRecord | null }
  /** it was in the asked-for state already (200, the same body again) */
  | { kind: 'already', reservation: ReservationRecord | null, purchase: PurchaseRecord | null }
  /** it is in a state this request cannot change (409); `status` says which */
  | { kind: 'refused', status: string }
  /** queued, outcome not known in time (202) */
  | { kind: 'pending' }

export type StatusResult<T> =
  | { kind: 'option_not_found' }
  | { kind: 'not_found' }
  | { kind: 'recorded', record: T }
  /** queued; `ticket` is its number in the option's line (null for a job of older code) */
  | { kind: 'pending', place: Place | null, ticket: number | null }

/** How a purchase or hold is answered: after its outcome (up to PURCHASE_WAIT_MS), or at once (Prefer: respond-async). */
export interface SubmitOptions {
  idempotencyKey?: string
  respondAsync?: boolean
}

/** How many times a request tries to claim an Idempotency-Key whose owner let it go meanwhile. */
const IDEMPOTENCY_CLAIM_ATTEMPTS = 3

export interface SaleServiceDeps {
  db: Db
  queues: PurchaseQueues
  waiter: OutcomeWaiter
  /** each option's line: numbers at enqueue, positions and estimated waits */
  line: QueueLine
  /** raised before a request is queued while an API holds its option's direct lease (any API may hold it) */
  fences: DirectFences
  waitMs: number
  log: Logger
  /** hours an Idempotency-Key is remembered */
  idempotencyKeyTtlHours: number
  /** the cap on each option's queue; absent: no cap */
  backpressure?: QueueBackpressure
  /** applies the requests of an option with nobody in line at once; absent: every request is queued */
  direct?: DirectSales
  /** told of every answer to a purchase that reached a queue (metrics); absent: nobody listens */
  observer?: PurchaseObserver
}

/** Sees each purchase's answer once; called in line with the request, so it must only count in memory. */
export interface PurchaseObserver {
  purchaseAnswered: (outcome: 'succeeded' | 'rejected' | 'pending', enqueuedAt: number) => void
}

/** The add failed before anything reached Redis: nothing can be queued under this id by this request. */
class NothingQueuedError extends Error {
  override name = 'NothingQueuedError'
}

/** What differs between a purchase and a hold on their common path. */
interface NewRecordKind<T> {
  request: (id: string) => PurchaseRequest | HoldRequest
  find: (db: Db, ticketOptionId: string, id: string) => Promise<T | null>
  /** for an Idempotency-Key only: computed when one is given (a SHA-256 per request otherwise) */
  requestHash: () => string
  /** purchases are counted for /metrics */
  observed: boolean
}

export class SaleService {
  private readonly knownOptions = new KnownOptions()
  /** The sends of keyed requests of this process, by id, until each is queued or applied (see `follow`). */
  private readonly keyedSends = new Map<string, Promise<void>>()

  constructor (private readonly deps: SaleServiceDeps) {}

  /** The option's limits, or null when there is no such option. */
  async optionLimits (ticketOptionId: string): Promise<TicketOptionLimits | null> {
    return await this.knownOptions.lookup(ticketOptionId, async (id) => await ticketOptionLimits(this.deps.db, id))
  }

  /** Creates an option; this process then knows its limits without asking (a sale often opens right after). */
  async createOption (input: NewTicketOption): Promise<TicketOption> {
    const option = await createTicketOption(this.deps.db, input)
    this.knownOptions.add(option.id, { maxPerPurchase: option.max_per_purchase, maxPerUser: option.max_per_user })
    return option
  }

  purchase (purchase: NewPurchase, options: SubmitOptions = {}): Promise<SubmitResult<PurchaseRecord>> {
    return this.submitNew(purchase.ticketOptionId, purchase.quantity, options, {
      // Its own fields before the spread: Node 20's V8 adds each property after a spread on a slow path (about 0.6 µs each).
      request: (purchaseId) => ({ kind: 'purchase', purchaseId, enqueuedAt: Date.now(), ...purchase }),
      find: findPurchase,
      requestHash: () => purchaseRequestHash(purchase.quantity),
      observed: true,
    })
  }

  async hold (hold: NewHold, options: SubmitOptions = {}): Promise<SubmitResult<ReservationRecord>> {
    return await this.submitNew(hold.ticketOptionId, hold.quantity, options, {
      request: (reservationId) => ({ kind: 'hold', reservationId, enqueuedAt: Date.now(), ...hold }),
      find: findReservation,
      requestHash: () => holdRequestHash(hold.quantity, hold.holdSeconds),
      observed: false,
    })
  }

  private async submitNew<T extends PurchaseRecord | ReservationRecord> (ticketOptionId: string, quantity: number, options: SubmitOptions, kind: NewRecordKind<T>): Promise<SubmitResult<T>> {
    const key = options.idempotencyKey
    const waitMs = options.respondAsync === true ? 0 : this.deps.waitMs
    // Known here: no await (an option's limits never change).
    const limits = this.knownOptions.known(ticketOptionId) ?? await this.optionLimits(ticketOptionId)
    // Never create a queue (or any Redis key) for an id nobody created.
    if (limits === null) return { kind: 'option_not_found' }
    if (exceedsQuantityLimit(quantity, limits.maxPerPurchase)) return { kind: 'quantity_over_limit', limit: limits.maxPerPurchase ?? 0 }
    // Before a key is claimed, so a full queue costs one comparison in memory, not
    // a claim to let go again; the place itself is taken when the job is added (addJob).
    if (key !== undefined && await this.queueIsFull(ticketOptionId)) throw new QueueFullError()
    const result = key === undefined
      ? await this.enqueueAndWait(kind.request(randomUUID()), null, kind.find, waitMs)
      : await this.submitOnce(ticketOptionId, key, kind, waitMs)
    if (result.kind === 'recorded') return { limits, ...result }
    return result
  }

  /** Whether the option's queue is full; a Redis that cannot say is a 503. */
  private async queueIsFull (ticketOptionId: string): Promise<boolean> {
    const { backpressure } = this.deps
    if (backpressure === undefined) return false
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
   * Adds a request's job. The one place a queue slot lives: a place in the
   * option's queue is taken for the add, kept when the job is added and given
   * back otherwise. Throws QueueFullError or NothingQueuedError when nothing
   * reached Redis, or the add's own error when Redis may have stored the job.
   */
  private async addJob (request: SaleRequest): Promise<number> {
    return await inSpan(PurchaseSpan.enqueue, () => requestAttributes(request), async (span) => {
      const { queues, backpressure, line } = this.deps
      const slot = backpressure === undefined
        ? undefined
        : await this.readQueueCount(async () => await backpressure.reserve(request.ticketOptionId), request.ticketOptionId)
      if (slot === null) throw new QueueFullError()
      try {
        // Its number in the option's line; nothing is queued when Redis cannot hand one out.
        const { ticket, unfencedLease } = await line.take(request.ticketOptionId).catch((err: unknown) => { throw new NothingQueuedError('no line number', { cause: err }) })
        span?.setAttribute(PurchaseAttribute.line, ticket)
        if (unfencedLease !== null) {
          // An API holds the option's direct lease: it must not apply a later purchase before this one.
          await this.deps.fences.raise(request.ticketOptionId, unfencedLease).catch((err: unknown) => { throw new NothingQueuedError('the direct lease could not be fenced', { cause: err }) })
        }
        try {
          await queues.enqueue({ ...request, line: ticket })
        } catch (err) {
          throw queues.neverSent(err) ? new NothingQueuedError('the add was never sent', { cause: err }) : err
        }
        slot?.keep()
        return ticket
      } finally {
        slot?.release() // does nothing once kept
      }
    })
  }

  /**
   * Applies the request at once when its option has nobody in line and
   * somebody waits (`wait`, which begins the wait for its outcome), else
   * adds its job; throws as addJob does, or the direct batch's error when it
   * could be neither applied nor queued. The wait begins before the job is
   * added, so an outcome told at once is not missed, and only then: a
   * request applied here has its outcome in hand (a wait per purchase cost a
   * single buyer a timer, a promise and two map entries).
   */
  private async send (request: SaleRequest, wait: (() => OutcomeWait) | null): Promise<Sent> {
    if (wait !== null && this.deps.direct !== undefined) {
      // Tracing on: carried like a job's, so the spans of a batch of several join each request's trace.
      const traceContext = currentTraceContext()
      const result = await this.deps.direct.apply(traceContext === undefined ? request : { ...request, traceContext })
      if (result.kind === 'applied') return result
      if (result.kind === 'queued') return { kind: 'queued', ticket: result.line, wait: wait(), late: true }
    }
    const waiting = wait === null ? null : wait()
    try {
      return { kind: 'queued', ticket: await this.addJob(request), wait: waiting, late: false }
    } catch (err) {
      waiting?.cancel()
      throw err
    }
  }

  /** Awaits an outcome (`outcome` resolves null when none is known), traced as the request's `purchase wait` span. */
  private async waitFor<R> (request: SaleRequest, outcome: () => Promise<R | null>, label: (known: R) => string): Promise<R | null> {
    return await inSpan(PurchaseSpan.wait, () => requestAttributes(request), async (span) => {
      const known = await outcome()
      span?.setAttribute(PurchaseAttribute.outcome, known === null ? 'pending' : label(known))
      return known
    })
  }

  /** Where a queued request stands, or null when that cannot be read now (Redis). */
  private async placeOf (ticketOptionId: string, ticket: number | null): Promise<Place | null> {
    if (ticket === null) return null
    try {
      return await this.deps.line.place(ticketOptionId, ticket)
    } catch (err) {
      this.deps.log.warn({ err, ticketOptionId }, 'could not read the place in line')
      return null
    }
  }

  /**
   * Adds a new purchase's or hold's job and waits for its outcome. `key` is
   * the Idempotency-Key this request claimed for it, if any.
   */
  private async enqueueAndWait<T extends PurchaseRecord | ReservationRecord> (request: PurchaseRequest | HoldRequest, key: string | null, find: NewRecordKind<T>['find'], waitMs: number): Promise<QueuedResult<T>> {
    const jobId = jobIdOf(request)
    const lookup = async (): Promise<T | null> => await find(this.deps.db, request.ticketOptionId, jobId)
    // A buyer who asked not to wait (respond-async) is queued: the answer is 202 either way.
    const sending = this.send(request, waitMs > 0 ? () => this.deps.waiter.wait(jobId, waitMs, lookup) : null)
    if (key !== null) this.keyedSends.set(jobId, sending.then(() => {}, () => {}))
    let sent: Sent
    try {
      sent = await sending
    } catch (err) {
      return await this.notQueued(request, key, err)
    } finally {
      if (key !== null) this.keyedSends.delete(jobId)
    }
    if (sent.kind === 'applied') return this.answered({ kind: 'recorded', record: sent.outcome as T }, request)
    const { wait, late, ticket } = sent
    const record = wait === null
      ? null
      : await this.waitFor(request, async () => {
        // Told before its wait began, if at all: recorded by then. A read that fails (the batch
        // was queued because PostgreSQL failed) leaves the wait for the worker's message.
        const told = late ? await lookup().catch(() => null) : null
        if (told !== null) {
          wait.cancel()
          return told
        }
        return (await wait.promise as T | null) ?? await lookup()
      }, (r) => (r as { status: string }).status)
    if (record !== null) return this.answered({ kind: 'recorded', record }, request)
    return this.answered({ kind: 'pending', id: jobId, place: await this.placeOf(request.ticketOptionId, ticket) }, request)
  }

  /**
   * After a failed add. When Redis may have stored the job, or when another
   * request with the same key may add it meanwhile (see `follow`), the
   * request is voided in PostgreSQL, so the 503 stays true, unless a worker
   * recorded an outcome first, which is then the answer. A claimed key is let
   * go, so a retry starts afresh.
   */
  private async notQueued<T> (request: PurchaseRequest | HoldRequest, key: string | null, err: unknown): Promise<QueuedResult<T>> {
    const { db, log } = this.deps
    const id = jobIdOf(request)
    const nothingQueued = err instanceof NothingQueuedError || err instanceof QueueFullError
    if (!(err instanceof QueueFullError)) log.warn({ err, id }, 'could not enqueue')
    if (!nothingQueued || key !== null) {
      try {
        const recorded = await voidUnqueued(db, request)
        if (recorded !== null) return this.answered({ kind: 'recorded', record: recorded as T }, request)
      } catch (voidErr) {
        log.error({ err: voidErr, id }, 'could not void a request whose enqueue failed')
        // Its fate is unknown: never claim nothing was bought.
        return this.answered({ kind: 'pending', id, place: null }, request)
      }
    }
    if (key !== null) {
      await releaseIdempotencyKey(db, { ticket_option_id: request.ticketOptionId, user_id: request.userId, key, purchase_id: id })
        .catch((releaseErr: unknown) => { log.warn({ err: releaseErr, id }, 'could not let an idempotency key go') })
    }
    throw err instanceof QueueFullError ? err : new ServiceUnavailableError('The purchase queue')
  }

  /**
   * A purchase or hold with an Idempotency-Key (API.md): the request whose key
   * row PostgreSQL inserts creates it; every other request with the key
   * answers its outcome, or 422 when the request differs.
   */
  private async submitOnce<T extends PurchaseRecord | ReservationRecord> (ticketOptionId: string, key: string, kind: NewRecordKind<T>, waitMs: number): Promise<QueuedResult<T>> {
    const { db, idempotencyKeyTtlHours } = this.deps
    const requestHash = kind.requestHash()
    for (let attempt = 1; attempt <= IDEMPOTENCY_CLAIM_ATTEMPTS; attempt++) {
      const request = kind.request(randomUUID())
      const claim = await claimIdempotencyKey(db, {
        ticketOptionId, userId: request.userId, key, requestHash, purchaseId: jobIdOf(request), ttlHours: idempotencyKeyTtlHours,
      })
      if (claim.kind === 'claimed') return await this.enqueueAndWait(request, key, kind.find, waitMs)
      if (claim.kind === 'vanished') continue
      if (claim.row.request_hash !== requestHash) return { kind: 'idempotency_key_reused' }
      const followed = await this.follow(kind.request(claim.row.purchase_id), kind.find, waitMs)
      if (followed !== null) return followed
      // The key's request was never queued (its enqueue failed and it was voided): start afresh.
      await releaseIdempotencyKey(db, claim.row)
    }
    throw new ServiceUnavailableError('The purchase queue')
  }

  /**
   * The outcome of a request another one created with the same key; null
   * when it was voided because it never reached a queue. When it is neither
   * recorded nor queued (the API that claimed the key died before it
   * enqueued, or has not enqueued yet), its job is added again: the job id is
   * its id, so an existing job is left alone, and should the first request's
   * enqueue fail after all, it voids it, and this job changes nothing.
   * When the first request is this process's own, still being sent, that
   * send is awaited first: it queues or applies the request itself, and a job
   * added here for a purchase it is applying directly would hold the option
   * off the direct path until a worker took that job.
   */
  private async follow<T extends PurchaseRecord | ReservationRecord> (request: PurchaseRequest | HoldRequest, find: NewRecordKind<T>['find'], waitMs: number): Promise<QueuedResult<T> | null> {
    const { db, waiter, log } = this.deps
    const { ticketOptionId } = request
    const id = jobIdOf(request)
    await this.keyedSends.get(id)
    // Registered before anything is read, so an outcome published from now on is not missed.
    const wait = waiter.wait(id, waitMs, async () => await find(db, ticketOptionId, id))
    let recorded: T | null
    try {
      recorded = await find(db, ticketOptionId, id)
      if (recorded === null && !await this.requeue(request)) {
        wait.cancel() // Redis is down: no outcome will arrive; answer from PostgreSQL now
        recorded = await find(db, ticketOptionId, id)
      }
    } catch (err) {
      wait.cancel()
      throw err
    }
    if (recorded === null && waitMs > 0) {
      recorded = (await wait.promise as T | null) ?? await find(db, ticketOptionId, id)
    } else {
      wait.cancel()
    }
    if (recorded === null) return { kind: 'pending', id, place: await this.pendingPlace(ticketOptionId, id) }
    if (recorded.status === 'rejected' && recorded.reason === NOT_QUEUED) {
      log.info({ id }, 'the request of an idempotency key was never queued')
      return null
    }
    return { kind: 'recorded', record: recorded }
  }

  /**
   * Makes sure the request's job is queued; false when Redis could not be
   * asked. Takes no place in the queue: the request that claimed the key did.
   */
  private async requeue (request: SaleRequest): Promise<boolean> {
    const { queues, log } = this.deps
    const id = jobIdOf(request)
    try {
      if (await queues.jobState(request.ticketOptionId, id) === 'pending') return true
      await queues.enqueue(request)
      return true
    } catch (err) {
      log.warn({ err, id }, 'could not check or re-add the job of an idempotency key')
      return false
    }
  }

  private answered<T> (result: QueuedResult<T>, request: SaleRequest): QueuedResult<T> {
    if (request.kind !== 'purchase') return result
    if (result.kind === 'pending') this.deps.observer?.purchaseAnswered('pending', request.enqueuedAt)
    else if (result.kind === 'recorded') this.deps.observer?.purchaseAnswered((result.record as PurchaseRecord).status === 'rejected' ? 'rejected' : 'succeeded', request.enqueuedAt)
    return result
  }

  /** Confirms a hold: its tickets become a purchase (API.md "Holds"). */
  async confirm (ticketOptionId: string, reservationId: string, userId: string, requestId: string): Promise<ChangeResult> {
    const reservation = await this.reservationOf(ticketOptionId, reservationId, userId)
    if (reservation.kind !== 'found') return reservation
    const { record } = reservation
    if (record.status === 'confirmed') return { kind: 'already', reservation: record, purchase: await this.purchaseOf(record) }
    if (record.status !== 'held') return { kind: 'refused', status: record.status }
    const request: ConfirmRequest = { kind: 'confirm', reservationId, purchaseId: randomUUID(), ticketOptionId, userId, requestId, enqueuedAt: Date.now() }
    return await this.change(request, async () => {
      const now = await findReservation(this.deps.db, ticketOptionId, reservationId)
      if (now?.status === 'confirmed') return { kind: 'changed', reservation: now, purchase: await this.purchaseOf(now) }
      return now === null || now.status === 'held' ? { kind: 'pending' } : { kind: 'refused', status: now.status }
    })
  }

  /** Releases a hold: its tickets are available again (API.md "Holds"). */
  async release (ticketOptionId: string, reservationId: string, userId: string, requestId: string): Promise<ChangeResult> {
    const reservation = await this.reservationOf(ticketOptionId, reservationId, userId)
    if (reservation.kind !== 'found') return reservation
    const { record } = reservation
    if (record.status === 'released') return { kind: 'already', reservation: record, purchase: null }
    if (record.status !== 'held') return { kind: 'refused', status: record.status }
    const request: ReleaseRequest = { kind: 'release', reservationId, ticketOptionId, userId, requestId, enqueuedAt: Date.now() }
    return await this.change(request, async () => {
      const now = await findReservation(this.deps.db, ticketOptionId, reservationId)
      if (now?.status === 'released') return { kind: 'changed', reservation: now, purchase: null }
      return now === null || now.status === 'held' ? { kind: 'pending' } : { kind: 'refused', status: now.status }
    })
  }

  /** Cancels a succeeded purchase: its tickets are available again (API.md "Cancelling a purchase"). */
  async cancel (ticketOptionId: string, purchaseId: string, userId: string, requestId: string): Promise<ChangeResult> {
    if (await this.optionLimits(ticketOptionId) === null) return { kind: 'option_not_found' }
    const purchase = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    if (purchase === null) {
      // Neither a cancel nor a refusal can be decided before the purchase is.
      return await this.isQueued(ticketOptionId, purchaseId) ? { kind: 'refused', status: 'pending' } : { kind: 'not_found' }
    }
    if (purchase.user_id !== userId) return { kind: 'not_found' }
    if (purchase.cancelled_at !== null) return { kind: 'already', reservation: null, purchase }
    if (purchase.status !== 'succeeded') return { kind: 'refused', status: purchase.status }
    const request: CancelRequest = { kind: 'cancel', purchaseId, ticketOptionId, userId, requestId, enqueuedAt: Date.now() }
    return await this.change(request, async () => {
      const now = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
      return now?.cancelled_at == null ? { kind: 'pending' } : { kind: 'changed', reservation: null, purchase: now }
    })
  }

  /** The user's reservation, or why there is none to change. */
  private async reservationOf (ticketOptionId: string, reservationId: string, userId: string): Promise<{ kind: 'found', record: ReservationRecord } | { kind: 'option_not_found' } | { kind: 'not_found' } | { kind: 'refused', status: string }> {
    if (await this.optionLimits(ticketOptionId) === null) return { kind: 'option_not_found' }
    const record = await findReservation(this.deps.db, ticketOptionId, reservationId)
    if (record === null) {
      return await this.isQueued(ticketOptionId, reservationId) ? { kind: 'refused', status: 'pending' } : { kind: 'not_found' }
    }
    return record.user_id === userId ? { kind: 'found', record } : { kind: 'not_found' }
  }

  private async purchaseOf (reservation: ReservationRecord): Promise<PurchaseRecord | null> {
    return reservation.purchase_id === null ? null : await findPurchase(this.deps.db, reservation.ticket_option_id, reservation.purchase_id)
  }

  /**
   * Queues a confirmation, release or cancellation and waits for what it did;
   * `settled` reads the records when no outcome arrived in time. A 503 here
   * means "try again": retrying is safe, each of them changes a state once.
   */
  private async change (request: ConfirmRequest | ReleaseRequest | CancelRequest, settled: () => Promise<ChangeResult>): Promise<ChangeResult> {
    const jobId = jobIdOf(request)
    let sent: Sent
    try {
      sent = await this.send(request, () => this.deps.waiter.wait(jobId, this.deps.waitMs))
    } catch (err) {
      if (err instanceof QueueFullError) throw err
      this.deps.log.warn({ err, id: jobId }, 'could not enqueue')
      throw new ServiceUnavailableError('The purchase queue')
    }
    // A late wait (its direct batch queued instead) that missed the outcome ends at its time limit: `settled` then reads it.
    const wait = sent.kind === 'queued' ? sent.wait : null
    const outcome = sent.kind === 'applied' ? sent.outcome : wait === null ? null : await this.waitFor(request, async () => await wait.promise, outcomeStatus)
    if (outcome === null || !isChangeOutcome(outcome)) return await settled()
    if (outcome.changed) return { kind: 'changed', reservation: outcome.reservation, purchase: outcome.purchase }
    // Another request changed it first (a concurrent retry, or the expiry): say where it stands.
    return await settled()
  }

  /** Where a request stands that this process did not enqueue: its line number is in its job. */
  private async pendingPlace (ticketOptionId: string, jobId: string): Promise<Place | null> {
    try {
      const pending = await this.deps.queues.pendingJob(ticketOptionId, jobId)
      return pending === null ? null : await this.placeOf(ticketOptionId, pending.line)
    } catch (err) {
      this.deps.log.warn({ err, jobId }, 'could not read the place in line')
      return null
    }
  }

  private async isQueued (ticketOptionId: string, jobId: string): Promise<boolean> {
    try {
      return await this.deps.queues.jobState(ticketOptionId, jobId) === 'pending'
    } catch (err) {
      this.deps.log.warn({ err, jobId }, 'could not read a job state')
      throw new ServiceUnavailableError('The purchase queue')
    }
  }

  /** What the status route says of a purchase or hold: recorded, pending in its queue, or unknown. */
  async status (ticketOptionId: string, id: string, find: (db: Db, ticketOptionId: string, id: string) => Promise<PurchaseRecord | ReservationRecord | null>): Promise<StatusResult<PurchaseRecord | ReservationRecord>> {
    if (await this.optionLimits(ticketOptionId) === null) return { kind: 'option_not_found' }
    const recorded = await find(this.deps.db, ticketOptionId, id)
    if (recorded !== null) return { kind: 'recorded', record: recorded }
    let pending
    try {
      pending = await this.deps.queues.pendingJob(ticketOptionId, id)
    } catch (err) {
      this.deps.log.warn({ err, id }, 'could not read a job')
      throw new ServiceUnavailableError('The purchase queue')
    }
    if (pending !== null) return { kind: 'pending', place: await this.placeOf(ticketOptionId, pending.line), ticket: pending.line }
    // The job may have completed between the two reads.
    const late = await find(this.deps.db, ticketOptionId, id)
    return late === null ? { kind: 'not_found' } : { kind: 'recorded', record: late }
  }

  /** How long the option's line is now (GET /ticket_options/:id/queue); null when there is no such option. */
  async lineOf (ticketOptionId: string): Promise<LineSnapshot | null> {
    if (await this.optionLimits(ticketOptionId) === null) return null
    try {
      return await this.deps.line.snapshot(ticketOptionId)
    } catch (err) {
      this.deps.log.warn({ err, ticketOptionId }, 'could not read the line')
      throw new ServiceUnavailableError('The purchase queue')
    }
  }

  async purchaseStatus (ticketOptionId: string, purchaseId: string): Promise<StatusResult<PurchaseRecord>> {
    return await this.status(ticketOptionId, purchaseId, findPurchase) as StatusResult<PurchaseRecord>
  }

  async reservationStatus (ticketOptionId: string, reservationId: string): Promise<StatusResult<ReservationRecord>> {
    return await this.status(ticketOptionId, reservationId, findReservation) as StatusResult<ReservationRecord>
  }
}
