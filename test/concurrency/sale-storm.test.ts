/**
 * The ledger under a mixed storm (API.md "Selling features"): 2 API and 3
 * worker processes, one option of 300, and at once 200 purchases, 100 holds
 * (half confirmed, a quarter released) and 30 cancellations. Every ledger read
 * during the storm balances, nothing is a 5xx, and the scheduled check
 * reports nothing afterwards.
 */
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { createTestEnvironment, unbalancedOptions } from '../support/environment'
import { callJson } from '../support/load'
import { startProcess } from '../support/processes'
import { sleep } from '../support/wait'

const ALLOCATION = 300

t.test('a mixed storm across 2 APIs and 3 workers keeps available + held + sold = 300 at every read', async (t) => {
  const environment = await createTestEnvironment(t, { PURCHASE_WAIT_MS: '60000', RECONCILE_INTERVAL_MS: '1000', DATABASE_POOL_SIZE: '5' })
  const { env, sql } = environment
  const apis = await Promise.all([startProcess(t, 'api', env), startProcess(t, 'api', env)])
  await Promise.all([startProcess(t, 'worker', env), startProcess(t, 'worker', env), startProcess(t, 'worker', env)])
  const urls = apis.map((a) => a.url)
  const url = (i: number): string => urls[i % urls.length] as string
  const created = await callJson(url(0), 'POST', '/ticket_options', { name: 'storm', allocation: ALLOCATION })
  const optionId = created.body.id as string
  const base = `/ticket_options/${optionId}`

  const statuses: number[] = []
  const tally: Record<string, number> = {}
  const count = (what: string, status: number): void => {
    statuses.push(status)
    tally[`${what} ${status}`] = (tally[`${what} ${status}`] ?? 0) + 1
  }
  const send = async (i: number, what: string, path: string, body: unknown) => {
    const answer = await callJson(url(i), 'POST', path, body)
    count(what, answer.status)
    return answer
  }

  // Every read of the ledger while the storm runs must balance.
  const storm = { running: true }
  const reads: Array<Record<string, unknown>> = []
  const reader = (async () => {
    for (let i = 0; storm.running; i++) {
      const ledger = await callJson(url(i), 'GET', `${base}/ledger`)
      if (ledger.status === 200) reads.push(ledger.body)
      await sleep(5)
    }
  })()

  const buyer = async (i: number): Promise<void> => {
    const user = randomUUID()
    const bought = await send(i, 'purchase', `${base}/purchases`, { quantity: 1, user_id: user })
    // The first 30 buyers cancel what they bought, at once.
    if (i < 30 && bought.status === 201) await send(i + 1, 'cancel', `${base}/purchases/${bought.body.id as string}/cancel`, { user_id: user })
  }
  const holder = async (i: number): Promise<void> => {
    const user = randomUUID()
    const held = await send(i, 'hold', `${base}/reservations`, { quantity: 1, user_id: user, hold_seconds: 600 })
    if (held.status !== 201) return
    const reservation = `${base}/reservations/${held.body.id as string}`
    if (i % 4 < 2) await send(i + 1, 'confirm', `${reservation}/confirm`, { user_id: user })
    else if (i % 4 === 2) await send(i + 1, 'release', `${reservation}/release`, { user_id: user })
  }
  await Promise.all([...Array.from({ length: 200 }, async (_, i) => { await buyer(i) }), ...Array.from({ length: 100 }, async (_, i) => { await holder(i) })])
  storm.running = false
  await reader

  t.comment(`answers: ${JSON.stringify(Object.fromEntries(Object.entries(tally).sort()))}`)
  t.same(statuses.filter((s) => s >= 500 || s === 0), [], 'no 5xx, no request without an answer')
  const unbalancedReads = reads.filter((r) => r.balanced !== true || (r.available as number) + (r.held as number) + (r.sold as number) !== ALLOCATION)
  // The storm may be over in a few hundred ms (bundled adds): a few reads inside it are what counts.
  t.ok(reads.length > 2, `the ledger was read ${reads.length} times during the storm`)
  t.same(unbalancedReads, [], 'every read balanced')
  const ledger = (await callJson(url(0), 'GET', `${base}/ledger`)).body
  t.comment(`ledger after: ${JSON.stringify(ledger)}`)
  t.match(ledger, { initial_allocation: ALLOCATION, balanced: true })
  t.equal(ledger.available + ledger.held + ledger.sold, ALLOCATION)
  // One ticket each: 200 + 100 = 300, so every purchase and hold gets its ticket and every follow-up happens.
  t.same(tally, { 'purchase 201': 200, 'cancel 200': 30, 'hold 201': 100, 'confirm 201': 50, 'release 200': 25 }, 'the whole storm was served')
  t.match(ledger, { available: 55, held: 25, sold: 220, cancelled: 30 })
  t.same(await unbalancedOptions(sql), [], 'allocation_audit agrees')

  await sleep(1500) // one more scheduled check after the storm
  const metrics = await Promise.all(urls.map(async (u) => (await fetch(`${u}/metrics`)).text()))
  for (const text of metrics) t.match(text, /^ticket_options_unbalanced 0$/m, 'the reconciliation reports nothing')
})
