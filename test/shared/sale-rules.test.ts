import { randomUUID } from 'node:crypto'
import t from 'tap'
import { decideBatch, exceedsQuantityLimit, type BatchState, type OptionState, type StoredPurchase, type StoredReservation } from '../../shared/purchases/sale-rules'
import type { SaleRequest } from '../../shared/purchases/sale-request'

const OPTION: string = randomUUID()
const ALICE: string = randomUUID()
const BOB: string = randomUUID()
const NOW = Date.parse('2026-11-30T12:00:00Z')

/** mulberry32: a small seeded generator, so a failing mix can be replayed exactly. */
function seededRandom (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6D2B79F5) >>> 0
    let z = state
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }
}

function state (option: Partial<OptionState>, extra: Partial<BatchState> = {}): BatchState {
  return {
    option: { available: 0, held: 0, maxPerPurchase: null, maxPerUser: null, ...option },
    reservations: new Map(),
    purchases: new Map(),
    recordedHolds: new Set(),
    usage: new Map(),
    now: NOW,
    ...extra,
  }
}

const common = (userId = ALICE) => ({ ticketOptionId: OPTION, userId, requestId: 'r', enqueuedAt: NOW })
const buy = (quantity: number, userId = ALICE): SaleRequest => ({ kind: 'purchase', purchaseId: randomUUID(), quantity, ...common(userId) })
const hold = (quantity: number, userId = ALICE, holdSeconds = 600): SaleRequest => ({ kind: 'hold', reservationId: randomUUID(), quantity, holdSeconds, ...common(userId) })

t.test('purchases are served in order while tickets remain; a smaller one after a refusal still succeeds', async (t) => {
  const { decisions, available } = decideBatch(state({ available: 5 }), [buy(2), buy(2), buy(2), buy(1)])
  t.same(decisions.map((d) => 'status' in d ? d.status : d.kind), ['succeeded', 'succeeded', 'rejected', 'succeeded'])
  t.match(decisions[2], { reason: 'not_enough_tickets', availableBefore: 1 })
  t.equal(available, 0)
})

t.test('a request for exactly what is left succeeds; one more is rejected', async (t) => {
  t.match(decideBatch(state({ available: 3 }), [buy(3)]).decisions[0], { status: 'succeeded', availableBefore: 3 })
  t.match(decideBatch(state({ available: 3 }), [buy(4)]), { decisions: [{ status: 'rejected', reason: 'not_enough_tickets', availableBefore: 3 }], available: 3 })
})

t.test('max_per_purchase refuses a larger purchase or hold whatever is left, and it takes nothing', async (t) => {
  const { decisions, available, held } = decideBatch(state({ available: 100, maxPerPurchase: 10 }), [buy(11), buy(10), hold(50), hold(10)])
  t.same(decisions.map((d) => 'reason' in d ? d.reason : ('status' in d ? d.status : d.kind)), ['quantity_over_limit', 'succeeded', 'quantity_over_limit', 'held'])
  t.equal(available, 80)
  t.equal(held, 10)
  t.equal(exceedsQuantityLimit(10, 10), false, 'the limit itself is allowed')
  t.equal(exceedsQuantityLimit(11, null), false, 'null is no limit')
})

t.test('max_per_user counts succeeded purchases plus active holds, in order', async (t) => {
  const usage = new Map([[ALICE, 3]]) // bought or held before the batch
  const { decisions } = decideBatch(state({ available: 100, maxPerUser: 5 }, { usage }), [buy(1), hold(1), buy(1), buy(2, BOB), buy(4, BOB)])
  t.match(decisions, [
    { status: 'succeeded' }, { status: 'held' },
    { status: 'rejected', reason: 'user_limit_reached', used: 5 },
    { status: 'succeeded' },
    { status: 'rejected', reason: 'user_limit_reached', used: 2 },
  ])
})

t.test('a hold takes tickets from available into held until confirmed, released or expired', async (t) => {
  const reservation: StoredReservation = { id: randomUUID(), userId: ALICE, quantity: 3, status: 'held', expiresAt: NOW + 60_000 }
  const confirm: SaleRequest = { kind: 'confirm', reservationId: reservation.id, purchaseId: randomUUID(), ...common() }
  const release: SaleRequest = { kind: 'release', reservationId: reservation.id, ...common() }
  const s = state({ available: 7, held: 3 }, { reservations: new Map([[reservation.id, reservation]]) })
  const confirmed = decideBatch(s, [confirm, release])
  t.match(confirmed.decisions, [{ kind: 'confirm', status: 'confirmed' }, { kind: 'release', status: 'unchanged' }], 'a confirmed hold cannot be released')
  t.same([confirmed.available, confirmed.held], [7, 0], 'held became sold: available did not move')

  const other = { ...reservation, status: 'held' as const }
  const released = decideBatch(state({ available: 7, held: 3 }, { reservations: new Map([[other.id, other]]) }), [release, release])
  t.match(released.decisions, [{ status: 'released' }, { status: 'unchanged' }], 'released once')
  t.same([released.available, released.held], [10, 0])
})

t.test('a confirmation after expires_at loses to the expiry, even before the sweep ran', async (t) => {
  const reservation: StoredReservation = { id: randomUUID(), userId: ALICE, quantity: 3, status: 'held', expiresAt: NOW }
  const confirm: SaleRequest = { kind: 'confirm', reservationId: reservation.id, purchaseId: randomUUID(), ...common() }
  const effects = decideBatch(state({ available: 0, held: 3 }, { reservations: new Map([[reservation.id, reservation]]) }), [confirm])
  t.match(effects.decisions, [{ kind: 'confirm', status: 'unchanged' }])
  t.same(effects.expired, [reservation.id])
  t.same([effects.available, effects.held], [3, 0], 'the tickets are back')
})

t.test('only the user of a hold or purchase changes it', async (t) => {
  const reservation: StoredReservation = { id: randomUUID(), userId: ALICE, quantity: 1, status: 'held', expiresAt: NOW + 1000 }
  const purchase: StoredPurchase = { id: randomUUID(), userId: ALICE, quantity: 2, status: 'succeeded', cancelled: false }
  const requests: SaleRequest[] = [
    { kind: 'confirm', reservationId: reservation.id, purchaseId: randomUUID(), ...common(BOB) },
    { kind: 'release', reservationId: reservation.id, ...common(BOB) },
    { kind: 'cancel', purchaseId: purchase.id, ...common(BOB) },
  ]
  const effects = decideBatch(state({ available: 0, held: 1 }, { reservations: new Map([[reservation.id, reservation]]), purchases: new Map([[purchase.id, purchase]]) }), requests)
  t.match(effects.decisions, [{ status: 'unchanged' }, { status: 'unchanged' }, { status: 'unchanged' }])
  t.same([effects.available, effects.held], [0, 1])
})

t.test('a cancellation gives a succeeded purchase back once; a rejected one is not cancellable', async (t) => {
  const bought: StoredPurchase = { id: randomUUID(), userId: ALICE, quantity: 2, status: 'succeeded', cancelled: false }
  const refused: StoredPurchase = { id: randomUUID(), userId: ALICE, quantity: 2, status: 'rejected', cancelled: false }
  const cancel = (id: string): SaleRequest => ({ kind: 'cancel', purchaseId: id, ...common() })
  const usage = new Map([[ALICE, 2]])
  const effects = decideBatch(state({ available: 0, maxPerUser: 2 }, { purchases: new Map([[bought.id, bought], [refused.id, refused]]), usage }), [cancel(bought.id), cancel(bought.id), cancel(refused.id), buy(2)])
  t.match(effects.decisions, [{ status: 'cancelled' }, { status: 'unchanged' }, { status: 'unchanged' }, { status: 'succeeded' }], 'and the user may buy again')
  t.equal(effects.available, 0)
})

t.test('a redelivered purchase or hold changes nothing', async (t) => {
  const again = buy(1)
  const heldAgain = hold(1)
  const purchases = new Map([[(again as { purchaseId: string }).purchaseId, { id: (again as { purchaseId: string }).purchaseId, userId: ALICE, quantity: 1, status: 'succeeded' as const, cancelled: false }]])
  const effects = decideBatch(state({ available: 5 }, { purchases, recordedHolds: new Set([(heldAgain as { reservationId: string }).reservationId]) }), [again, heldAgain, again])
  t.same(effects.decisions, [{ kind: 'recorded' }, { kind: 'recorded' }, { kind: 'recorded' }])
  t.equal(effects.available, 5)
})

t.test('the ledger balances after any mix, in every round (seeded)', async (t) => {
  const seed = 20261130
  const random = seededRandom(seed)
  const initial = 200
  let s = state({ available: initial, maxPerUser: 12, maxPerPurchase: 8 })
  const users = [ALICE, BOB, randomUUID()]
  let sold = 0
  let failures = 0
  for (let round = 0; round < 200; round++) {
    const requests: SaleRequest[] = []
    for (let i = 0; i < 7; i++) {
      const user = users[Math.floor(random() * users.length)] as string
      const roll = random()
      const held = [...s.reservations.values()].filter((r) => r.status === 'held')
      const owned = [...s.purchases.values()].filter((p) => p.status === 'succeeded' && !p.cancelled)
      if (roll < 0.4) requests.push(buy(1 + Math.floor(random() * 9), user))
      else if (roll < 0.7) requests.push(hold(1 + Math.floor(random() * 9), user, 1 + Math.floor(random() * 3)))
      else if (roll < 0.8 && held[0] !== undefined) requests.push({ kind: 'confirm', reservationId: held[0].id, purchaseId: randomUUID(), ...common(held[0].userId) })
      else if (roll < 0.9 && held[0] !== undefined) requests.push({ kind: 'release', reservationId: held[0].id, ...common(held[0].userId) })
      else if (owned[0] !== undefined) requests.push({ kind: 'cancel', purchaseId: owned[0].id, ...common(owned[0].userId) })
    }
    const effects = decideBatch(s, requests)
    // Record what the batch did, as the store would, for the next round.
    requests.forEach((request, i) => {
      const d = effects.decisions[i]
      if (request.kind === 'purchase' && d?.kind === 'purchase') {
        s.purchases.set(request.purchaseId, { id: request.purchaseId, userId: request.userId, quantity: request.quantity, status: d.status, cancelled: false })
      } else if (request.kind === 'hold' && d?.kind === 'hold' && d.status === 'held') {
        s.reservations.set(request.reservationId, { id: request.reservationId, userId: request.userId, quantity: request.quantity, status: 'held', expiresAt: d.expiresAt })
      } else if (request.kind === 'confirm' && d?.kind === 'confirm' && d.status === 'confirmed') {
        const r = s.reservations.get(request.reservationId) as StoredReservation
        s.purchases.set(request.purchaseId, { id: request.purchaseId, userId: r.userId, quantity: r.quantity, status: 'succeeded', cancelled: false })
      }
    })
    sold = [...s.purchases.values()].filter((p) => p.status === 'succeeded' && !p.cancelled).reduce((sum, p) => sum + p.quantity, 0)
    const held = [...s.reservations.values()].filter((r) => r.status === 'held').reduce((sum, r) => sum + r.quantity, 0)
    if (effects.available < 0 || effects.held !== held || effects.available + effects.held + sold !== initial) failures++
    s = { ...s, option: { ...s.option, available: effects.available, held: effects.held }, now: s.now + 1000 }
  }
  t.equal(failures, 0, `available + held + sold = ${initial} after every round (seed ${seed})`)
  t.ok(sold > 0, `and tickets were sold (${sold})`)
})

t.test('refuses impossible input instead of miscounting', async (t) => {
  t.throws(() => decideBatch(state({ available: -1 }), []), RangeError)
  t.throws(() => decideBatch(state({ available: 1.5 }), []), RangeError)
  t.throws(() => decideBatch(state({ available: 10 }), [buy(0)]), RangeError)
  t.throws(() => decideBatch(state({ available: 10 }), [buy(2.5)]), RangeError)
})
