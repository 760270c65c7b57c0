/**
 * The rules of a sale, in one place (API.md contract version 2). The worker
 * decides every request of an option with `decideBatch`, in arrival order,
 * under the option's row lock; the API refuses an over-limit quantity with
 * `exceedsQuantityLimit` before it queues anything. No I/O here: the tests
 * drive every rule directly (test/shared/sale-rules.test.ts).
 *
 * - A purchase or hold gets its tickets when it asks for no more than
 *   `max_per_purchase`, the user's tickets (succeeded purchases not cancelled,
 *   plus active holds) stay within `max_per_user`, and enough remain; otherwise
 *   it is rejected and takes nothing. A later, smaller request may still
 *   succeed after a larger one was rejected (no head-of-line blocking).
 * - A confirmation turns a hold that is still active into a purchase; a hold
 *   whose time is up is expired right there, so confirmation and expiry never
 *   both win.
 * - A release gives an active hold's tickets back; a cancellation a succeeded
 *   purchase's, once.
 * Each keeps `initial = available + held + sold`.
 */
import type { SaleRequest } from './sale-request'

/** The option as the batch starts. */
export interface OptionState {
  /** tickets available now */
  available: number
  /** tickets of active holds */
  held: number
  maxPerPurchase: number | null
  maxPerUser: number | null
}

export type ReservationStatus = 'held' | 'confirmed' | 'released' | 'expired' | 'rejected'

/** A reservation recorded before this batch. */
export interface StoredReservation {
  id: string
  userId: string
  quantity: number
  status: ReservationStatus
  /** ms since epoch */
  expiresAt: number | null
}

/** A purchase recorded before this batch. */
export interface StoredPurchase {
  id: string
  userId: string
  quantity: number
  status: 'succeeded' | 'rejected'
  cancelled: boolean
}

/** Why a purchase or hold was refused. */
export type Rejection = 'not_enough_tickets' | 'quantity_over_limit' | 'user_limit_reached'

export interface Refusal {
  status: 'rejected'
  reason: Rejection
  /** tickets available when it was decided */
  availableBefore: number
  /** for user_limit_reached: the user's tickets when it was decided */
  used: number | null
}

export type Decision =
  /** a purchase or hold recorded before (a redelivered job): its record is the outcome */
  | { kind: 'recorded' }
  | { kind: 'purchase', status: 'succeeded', availableBefore: number }
  | ({ kind: 'purchase' } & Refusal)
  | { kind: 'hold', status: 'held', availableBefore: number, expiresAt: number }
  | ({ kind: 'hold' } & Refusal)
  | { kind: 'confirm', status: 'confirmed' }
  | { kind: 'release', status: 'released' }
  | { kind: 'cancel', status: 'cancelled' }
  /** the reservation or purchase is not in a state this request can change: nothing happened */
  | { kind: 'confirm' | 'release' | 'cancel', status: 'unchanged' }

/** What a batch writes, besides its decisions. */
export interface BatchEffects {
  decisions: Decision[]
  available: number
  held: number
  /** holds of this batch that expired when a confirmation found them past their time */
  expired: string[]
}

export interface BatchState {
  option: OptionState
  /** reservations the batch's confirmations and releases name, by id */
  reservations: Map<string, StoredReservation>
  /** purchases recorded before the batch that its purchases or cancellations name, by id */
  purchases: Map<string, StoredPurchase>
  /** holds recorded before the batch, by id (a redelivered hold job) */
  recordedHolds: Set<string>
  /** each user's tickets (succeeded not cancelled + active holds); only read when maxPerUser is set */
  usage: Map<string, number>
  /** ms since epoch, the batch's clock */
  now: number
}

export function exceedsQuantityLimit (quantity: number, maxPerPurchase: number | null): boolean {
  return maxPerPurchase !== null && quantity > maxPerPurchase
}

/**
 * Decides each request of one option, in order. `state` is changed as the
 * batch goes (reservations and purchases change status, usage moves), so a
 * later request sees what an earlier one did.
 */
export function decideBatch (state: BatchState, requests: readonly SaleRequest[]): BatchEffects {
  const { option, reservations, purchases, usage } = state
  if (!Number.isSafeInteger(option.available) || option.available < 0) throw new RangeError(`available must be a non-negative integer, got ${option.available}`)
  let available = option.available
  let held = option.held
  const expired: string[] = []
  const seen = new Set<string>()

  const used = (userId: string): number => usage.get(userId) ?? 0
  const use = (userId: string, delta: number): void => { usage.set(userId, used(userId) + delta) }

  /** The limits and the stock, in that order: the first that fails is the reason. */
  function take (userId: string, quantity: number): Refusal | null {
    if (!Number.isSafeInteger(quantity) || quantity < 1) throw new RangeError(`quantity must be a positive integer, got ${quantity}`)
    const availableBefore = available
    if (exceedsQuantityLimit(quantity, option.maxPerPurchase)) return { status: 'rejected', reason: 'quantity_over_limit', availableBefore, used: null }
    if (option.maxPerUser !== null && used(userId) + quantity > option.maxPerUser) {
      return { status: 'rejected', reason: 'user_limit_reached', availableBefore, used: used(userId) }
    }
    if (quantity > available) return { status: 'rejected', reason: 'not_enough_tickets', availableBefore, used: null }
    available -= quantity
    use(userId, quantity)
    return null
  }

  function decide (request: SaleRequest): Decision {
    switch (request.kind) {
      case undefined:
      case 'purchase': {
        // A purchase id twice in one batch only through a bug upstream: apply it once.
        if (purchases.has(request.purchaseId) || seen.has(request.purchaseId)) return { kind: 'recorded' }
        seen.add(request.purchaseId)
        const availableBefore = available
        const refused = take(request.userId, request.quantity)
        return refused === null ? { kind: 'purchase', status: 'succeeded', availableBefore } : { kind: 'purchase', ...refused }
      }
      case 'hold': {
        if (state.recordedHolds.has(request.reservationId) || seen.has(request.reservationId)) return { kind: 'recorded' }
        seen.add(request.reservationId)
        const availableBefore = available
        const refused = take(request.userId, request.quantity)
        if (refused !== null) return { kind: 'hold', ...refused }
        held += request.quantity
        return { kind: 'hold', status: 'held', availableBefore, expiresAt: state.now + request.holdSeconds * 1000 }
      }
      case 'confirm': {
        const reservation = reservations.get(request.reservationId)
        if (reservation?.status !== 'held' || reservation.userId !== request.userId) return { kind: 'confirm', status: 'unchanged' }
        if (reservation.expiresAt !== null && reservation.expiresAt <= state.now) {
          // Its time is up: the expiry wins, whoever got here first.
          reservation.status = 'expired'
          available += reservation.quantity
          held -= reservation.quantity
          use(reservation.userId, -reservation.quantity)
          expired.push(reservation.id)
          return { kind: 'confirm', status: 'unchanged' }
        }
        reservation.status = 'confirmed'
        // Held becomes sold: available and the user's count stay as they are.
        held -= reservation.quantity
        return { kind: 'confirm', status: 'confirmed' }
      }
      case 'release': {
        const reservation = reservations.get(request.reservationId)
        if (reservation?.status !== 'held' || reservation.userId !== request.userId) return { kind: 'release', status: 'unchanged' }
        reservation.status = 'released'
        available += reservation.quantity
        held -= reservation.quantity
        use(reservation.userId, -reservation.quantity)
        return { kind: 'release', status: 'released' }
      }
      case 'cancel': {
        const purchase = purchases.get(request.purchaseId)
        if (purchase?.status !== 'succeeded' || purchase.cancelled || purchase.userId !== request.userId) return { kind: 'cancel', status: 'unchanged' }
        purchase.cancelled = true
        available += purchase.quantity
        use(purchase.userId, -purchase.quantity)
        return { kind: 'cancel', status: 'cancelled' }
      }
    }
  }
  const decisions = requests.map(decide)
  return { decisions, available, held, expired }
}
