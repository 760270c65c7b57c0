import t from 'tap'
import { allocate } from '../../shared/allocation'

t.test('serves requests in order while tickets remain', async (t) => {
  const { decisions, remaining } = allocate(5, [{ quantity: 2 }, { quantity: 2 }, { quantity: 2 }, { quantity: 1 }])
  t.same(decisions.map((d) => d.status), ['succeeded', 'succeeded', 'rejected', 'succeeded'])
  t.same(decisions.map((d) => d.availableBefore), [5, 3, 1, 1])
  t.equal(remaining, 0)
})

t.test('a request for exactly what is left succeeds; one more is rejected', async (t) => {
  t.same(allocate(3, [{ quantity: 3 }]).decisions[0], { status: 'succeeded', availableBefore: 3 })
  t.same(allocate(3, [{ quantity: 4 }]), { decisions: [{ status: 'rejected', availableBefore: 3 }], remaining: 3 })
  t.same(allocate(0, [{ quantity: 1 }]).decisions[0]?.status, 'rejected')
})

t.test('never goes below zero, whatever the mix', async (t) => {
  let available = 100
  for (let round = 0; round < 200; round++) {
    const requests = Array.from({ length: 7 }, () => ({ quantity: 1 + Math.floor(Math.random() * 9) }))
    const { decisions, remaining } = allocate(available, requests)
    const sold = requests.reduce((sum, r, i) => sum + (decisions[i]?.status === 'succeeded' ? r.quantity : 0), 0)
    t.equal(remaining, available - sold)
    t.ok(remaining >= 0)
    available = remaining
  }
})

t.test('refuses impossible input instead of miscounting', async (t) => {
  t.throws(() => allocate(-1, []), RangeError)
  t.throws(() => allocate(1.5, []), RangeError)
  t.throws(() => allocate(10, [{ quantity: 0 }]), RangeError)
  t.throws(() => allocate(10, [{ quantity: 2.5 }]), RangeError)
})
