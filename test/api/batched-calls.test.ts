/**
 * api/purchasing/batched-calls.ts: one call per key in flight, the rest
 * gathered in arrival order, a failure reaching every member of its batch,
 * nothing kept for an idle key.
 */
import t from 'tap'
import { BatchedCalls } from '../../api/purchasing/batched-calls'

t.test('one call in flight per key; what arrives meanwhile goes next, in order', async (t) => {
  const sent: Array<{ key: string, items: number[] }> = []
  let inFlight = 0
  let most = 0
  const calls = new BatchedCalls<number, string>(async (key, items) => {
    inFlight++
    most = Math.max(most, inFlight)
    sent.push({ key, items })
    await new Promise((resolve) => setTimeout(resolve, 20))
    inFlight--
    return items.map((i) => `${key}:${i}`)
  })
  const first = [calls.call('a', 1), calls.call('a', 2), calls.call('b', 1)]
  await new Promise((resolve) => setTimeout(resolve, 5)) // the first batch of 'a' is in flight
  const later = [calls.call('a', 3), calls.call('a', 4)]
  t.same(await Promise.all([...first, ...later]), ['a:1', 'a:2', 'b:1', 'a:3', 'a:4'], 'each caller gets its own result')
  t.same(sent, [{ key: 'a', items: [1, 2] }, { key: 'b', items: [1] }, { key: 'a', items: [3, 4] }])
  t.equal(most, 2, 'one per key: a and b at once, never two of a')
  t.equal(calls.size, 0, 'idle keys are forgotten')
})

t.test('a failed call rejects every caller of its batch, and the next batch still goes', async (t) => {
  let fail = true
  const calls = new BatchedCalls<number, number>(async (_key, items) => {
    if (fail) { fail = false; throw new Error('store down') }
    return items
  })
  const failed = await Promise.allSettled([calls.call('k', 1), calls.call('k', 2)])
  t.same(failed.map((r) => r.status), ['rejected', 'rejected'])
  t.equal(await calls.call('k', 3), 3)
})

t.test('a batch is sent in the async context of its first caller, not of the batch before it', async (t) => {
  const { AsyncLocalStorage } = await import('node:async_hooks')
  const request = new AsyncLocalStorage<string>()
  const sentIn: string[] = []
  const calls = new BatchedCalls<number, number>(async (_key, items) => {
    sentIn.push(request.getStore() ?? 'none')
    await new Promise((resolve) => setTimeout(resolve, 20))
    return items
  })
  const first = request.run('request 1', async () => await calls.call('a', 1))
  await new Promise((resolve) => setTimeout(resolve, 5)) // request 1's batch is in flight
  const second = request.run('request 2', async () => await calls.call('a', 2))
  const third = request.run('request 3', async () => await calls.call('a', 3))
  await Promise.all([first, second, third])
  t.same(sentIn, ['request 1', 'request 2'], 'the second batch (2 and 3) runs in request 2\'s context')
})
