import t from 'tap'
import { allocate, exceedsQuantityLimit } from '../../shared/purchases/allocation'

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

t.test('serves requests in order while tickets remain', async (t) => {
  const { decisions, remaining } = allocate(5, [{ quantity: 2 }, { quantity: 2 }, { quantity: 2 }, { quantity: 1 }])
  t.same(decisions.map((d) => d.status), ['succeeded', 'succeeded', 'rejected', 'succeeded'])
  t.same(decisions.map((d) => d.availableBefore), [5, 3, 1, 1])
  t.equal(remaining, 0)
})

t.test('a request for exactly what is left succeeds; one more is rejected', async (t) => {
  t.same(allocate(3, [{ quantity: 3 }]).decisions[0], { status: 'succeeded', availableBefore: 3 })
  t.same(allocate(3, [{ quantity: 4 }]), { decisions: [{ status: 'rejected', reason: 'not_enough_tickets', availableBefore: 3 }], remaining: 3 })
  t.same(allocate(0, [{ quantity: 1 }]).decisions[0]?.status, 'rejected')
})

t.test('a request over the quantity limit is rejected whatever is left, and takes nothing', async (t) => {
  const { decisions, remaining } = allocate(100, [{ quantity: 11 }, { quantity: 10 }, { quantity: 50 }], 10)
  t.same(decisions, [
    { status: 'rejected', reason: 'quantity_over_limit', availableBefore: 100 },
    { status: 'succeeded', availableBefore: 100 },
    { status: 'rejected', reason: 'quantity_over_limit', availableBefore: 90 },
  ])
  t.equal(remaining, 90)
  t.equal(exceedsQuantityLimit(10, 10), false, 'the limit itself is allowed')
  t.equal(exceedsQuantityLimit(11, 10), true)
})

t.test('never goes below zero, whatever the mix', async (t) => {
  const seed = 20261130
  const random = seededRandom(seed)
  let available = 100
  let mismatches = 0
  for (let round = 0; round < 200; round++) {
    const requests = Array.from({ length: 7 }, () => ({ quantity: 1 + Math.floor(random() * 9) }))
    const { decisions, remaining } = allocate(available, requests)
    const sold = requests.reduce((sum, r, i) => sum + (decisions[i]?.status === 'succeeded' ? r.quantity : 0), 0)
    if (remaining !== available - sold || remaining < 0) mismatches++
    available = remaining
  }
  t.equal(mismatches, 0, `every round balances (seed ${seed})`)
  t.equal(available, 0, 'and the tickets run out, so the rejections were exercised too')
})

t.test('refuses impossible input instead of miscounting', async (t) => {
  t.throws(() => allocate(-1, []), RangeError)
  t.throws(() => allocate(1.5, []), RangeError)
  t.throws(() => allocate(10, [{ quantity: 0 }]), RangeError)
  t.throws(() => allocate(10, [{ quantity: 2.5 }]), RangeError)
})
