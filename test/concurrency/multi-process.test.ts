/**
 * The design's promise under real concurrency: 2 API processes and 3 worker
 * processes, 1,000 purchases fired at once. Exactly the allocation is sold,
 * every other buyer gets a 409, nothing is a 5xx, and invariant 1 holds.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { createTestEnvironment, eachQueueBackend, unbalancedOptions } from '../support/environment'
import { callJson, countByStatus, runPurchases, type PurchaseSpec } from '../support/load'
import { startProcess } from '../support/processes'

eachQueueBackend(t, '2 APIs and 3 workers under a burst', async (t, backendEnv) => {
  // 5 processes: smaller pools keep them (and a test file running beside) under PostgreSQL's 100 connections.
  const environment = await createTestEnvironment(t, { PURCHASE_WAIT_MS: '60000', DATABASE_POOL_SIZE: '5', ...backendEnv })
  const { env, sql } = environment
  const apis = await Promise.all([startProcess(t, 'api', env), startProcess(t, 'api', env)])
  await Promise.all([startProcess(t, 'worker', env), startProcess(t, 'worker', env), startProcess(t, 'worker', env)])
  const urls = apis.map((a) => a.url)
  const [url] = urls as [string]

  /**
   * Every purchase as fast as 256 keep-alive connections per API carry them,
   * alternating between the APIs, so both are in the race from the start.
   */
  async function burst (purchases: PurchaseSpec[]) {
    return (await runPurchases({ urls, total: purchases.length, concurrency: 512, spec: (i) => purchases[i] as PurchaseSpec })).answers
  }

  async function createOption (allocation: number): Promise<string> {
    const res = await callJson(url, 'POST', '/ticket_options', { name: `burst ${allocation}`, allocation })
    return res.body.id as string
  }

  async function committed (ids: string[]): Promise<number> {
    const { rows } = await sql.query("select count(*)::int as n from purchases where id = any($1::uuid[]) and status = 'succeeded'", [ids])
    return rows[0].n as number
  }

  t.test('1,000 purchases of 1 ticket against 300', async (t) => {
    const optionId = await createOption(300)
    const answers = await burst(Array.from({ length: 1000 }, () => ({ optionId, quantity: 1, userId: randomUUID() })))
    const counts = countByStatus(answers)
    t.comment(`answers: ${JSON.stringify(counts)}`)
    t.same(counts, { 201: 300, 409: 700 })
    t.comment(`by API: ${JSON.stringify([0, 1].map((api) => countByStatus(answers.filter((a) => a.api === api))))}`)
    // Which API's buyers came first is up to the machine; that both fed the one queue is not.
    t.ok([0, 1].every((api) => answers.some((a) => a.api === api)), 'both APIs took purchases, decided in one queue')
    t.equal((await callJson(url, 'GET', `/ticket_options/${optionId}`)).body.allocation, 0)
    const sold = answers.filter((a) => a.status === 201).map((a) => a.body.id as string)
    t.equal(await committed(sold), 300, 'every 201 is committed')
    for (const a of answers.filter((a) => a.status === 409)) {
      if (a.body.requested !== 1 || typeof a.body.available !== 'number') t.fail(`bad 409 body ${JSON.stringify(a.body)}`)
    }
    t.same(await unbalancedOptions(sql), [])
  })

  t.test('1,000 purchases of 1–5 tickets against 300', async (t) => {
    const optionId = await createOption(300)
    const answers = await burst(Array.from({ length: 1000 }, (_, i) => ({ optionId, quantity: 1 + (i * 7) % 5, userId: randomUUID() })))
    const counts = countByStatus(answers)
    t.comment(`answers: ${JSON.stringify(counts)}`)
    t.same(Object.keys(counts).sort(), ['201', '409'], 'only 201 and 409')
    const soldTickets = answers.filter((a) => a.status === 201).reduce((sum, a) => sum + (a.body.quantity as number), 0)
    t.equal(soldTickets, 300, 'the whole allocation is sold: with 1,000 buyers the last ticket always finds a taker')
    t.equal((await callJson(url, 'GET', `/ticket_options/${optionId}`)).body.allocation, 0)
    const sold = answers.filter((a) => a.status === 201).map((a) => a.body.id as string)
    t.equal(await committed(sold), sold.length)
    for (const a of answers.filter((a) => a.status === 409)) {
      if (!((a.body.available as number) < (a.body.requested as number))) t.fail(`a 409 with enough tickets: ${JSON.stringify(a.body)}`)
    }
    t.same(await unbalancedOptions(sql), [])
  })

  t.test('two options hammered at once do not interfere', async (t) => {
    const [a, b] = await Promise.all([createOption(100), createOption(250)])
    const purchases = Array.from({ length: 800 }, (_, i) => ({ optionId: i % 2 === 0 ? a : b, quantity: 1, userId: randomUUID() }))
    const answers = await burst(purchases)
    const of = (id: string): Record<string, number> => countByStatus(answers.filter((_, i) => purchases[i]?.optionId === id))
    t.comment(`option a: ${JSON.stringify(of(a))}, option b: ${JSON.stringify(of(b))}`)
    t.same(of(a), { 201: 100, 409: 300 })
    t.same(of(b), { 201: 250, 409: 150 })
    t.equal((await callJson(url, 'GET', `/ticket_options/${a}`)).body.allocation, 0)
    t.equal((await callJson(url, 'GET', `/ticket_options/${b}`)).body.allocation, 0)
    t.same(await unbalancedOptions(sql), [])
  })
})
