/**
 * Contract version 2 (API.md "Selling features"): limits, holds, confirmation,
 * release, expiry, cancellation and the ledger, through the routes, with a
 * worker applying them.
 */
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { buy, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { buildApp } from '../../api/app'
import { createTestEnvironment, eachQueueBackend, unbalancedOptions } from '../support/environment'
import { waitFor } from '../support/wait'

const OTHER = '5e0d6c1a-0b6f-4c8e-9a34-1f2d3c4b5a69'

async function createLimited (app: FastifyInstance, allocation: number, limits: Record<string, number | null>): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'limited', allocation, ...limits } })
  if (res.statusCode !== 201) throw new Error(`create answered ${res.statusCode}: ${res.body}`)
  return res.json().id as string
}

const hold = async (app: FastifyInstance, option: string, body: Record<string, unknown> = {}, headers: Record<string, string> = {}) =>
  await app.inject({ method: 'POST', url: `/ticket_options/${option}/reservations`, payload: { quantity: 1, user_id: USER, ...body }, headers })
const act = async (app: FastifyInstance, path: string, userId = USER) =>
  await app.inject({ method: 'POST', url: path, payload: { user_id: userId } })
const get = async (app: FastifyInstance, path: string) => await app.inject({ method: 'GET', url: path })

eachQueueBackend(t, 'selling with holds', async (t, backendEnv) => {
  const { app, sql } = await setUp(t, { env: backendEnv })
  const balanced = async (t: Test): Promise<void> => { t.same(await unbalancedOptions(sql), [], 'every option balances') }

  t.test('an option without limits reads exactly as before; limits show only when set', async (t) => {
    const plain = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'plain', allocation: 3 } })
    t.same(Object.keys(plain.json()).sort(), ['allocation', 'desc', 'id', 'name'])
    const nulls = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'nulls', allocation: 3, max_per_purchase: null, max_per_user: null } })
    t.same(Object.keys(nulls.json()).sort(), ['allocation', 'desc', 'id', 'name'], 'null is no limit')
    const id = await createLimited(app, 10, { max_per_purchase: 4, max_per_user: 6 })
    t.match((await get(app, `/ticket_options/${id}`)).json(), { allocation: 10, max_per_purchase: 4, max_per_user: 6 })
    for (const bad of [{ max_per_purchase: 0 }, { max_per_user: -1 }, { max_per_purchase: '4' }, { max_per_user: 2147483648 }]) {
      const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'bad', allocation: 1, ...bad } })
      t.equal(res.statusCode, 400, JSON.stringify(bad))
    }
  })

  t.test('hold, read, confirm, confirm again, and the ledger along the way', async (t) => {
    const id = await createOption(app, 10)
    const started = Date.now()
    const held = await hold(app, id, { quantity: 3, hold_seconds: 120 })
    t.equal(held.statusCode, 201)
    const reservation = held.json()
    t.match(reservation, { ticket_option_id: id, user_id: USER, quantity: 3, status: 'held' })
    t.equal(held.headers.location, `/ticket_options/${id}/reservations/${reservation.id}`)
    const expiresIn = Date.parse(reservation.expires_at) - started
    t.ok(expiresIn > 118_000 && expiresIn < 122_000, `expires in ${expiresIn} ms`)
    t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 7, 'held tickets are not available')
    t.same((await get(app, `/ticket_options/${id}/ledger`)).json(), { ticket_option_id: id, initial_allocation: 10, available: 7, held: 3, sold: 0, cancelled: 0, balanced: true })
    t.same((await get(app, `/ticket_options/${id}/reservations/${reservation.id}`)).json(), reservation)

    t.equal((await act(app, `/ticket_options/${id}/reservations/${reservation.id}/confirm`, OTHER)).statusCode, 404, 'another user')
    const confirmed = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/confirm`)
    t.equal(confirmed.statusCode, 201)
    const purchase = confirmed.json()
    t.match(purchase, { ticket_option_id: id, user_id: USER, quantity: 3, status: 'succeeded', reservation_id: reservation.id })
    t.equal(confirmed.headers.location, `/ticket_options/${id}/purchases/${purchase.id}`)
    const again = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/confirm`)
    t.equal(again.statusCode, 200, 'confirming again')
    t.same(again.json(), purchase, 'the same purchase')
    t.match((await get(app, `/ticket_options/${id}/reservations/${reservation.id}`)).json(), { status: 'confirmed', purchase_id: purchase.id })
    t.match((await get(app, `/ticket_options/${id}/purchases/${purchase.id}`)).json(), { status: 'succeeded', reservation_id: reservation.id })
    t.same((await get(app, `/ticket_options/${id}/ledger`)).json(), { ticket_option_id: id, initial_allocation: 10, available: 7, held: 0, sold: 3, cancelled: 0, balanced: true })

    const release = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/release`)
    t.equal(release.statusCode, 409, 'a confirmed hold cannot be released')
    t.same(release.json(), { statusCode: 409, error: 'Conflict', message: 'The reservation is confirmed, no longer held', code: 'RESERVATION_NOT_ACTIVE', status: 'confirmed' })
    await balanced(t)
  })

  t.test('release gives the tickets back, once; a released hold cannot be confirmed', async (t) => {
    const id = await createOption(app, 5)
    const reservation = (await hold(app, id, { quantity: 5 })).json()
    t.equal((await buy(app, id)).statusCode, 409, 'nothing left while held')
    t.equal((await act(app, `/ticket_options/${id}/reservations/${reservation.id}/release`, OTHER)).statusCode, 404, 'another user')
    const released = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/release`)
    t.equal(released.statusCode, 200)
    t.match(released.json(), { id: reservation.id, status: 'released' })
    const again = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/release`)
    t.equal(again.statusCode, 200)
    t.same(again.json(), released.json(), 'the same body again')
    t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 5, 'returned once')
    const confirm = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/confirm`)
    t.equal(confirm.statusCode, 409)
    t.match(confirm.json(), { code: 'RESERVATION_NOT_ACTIVE', status: 'released' })
    await balanced(t)
  })

  t.test('holds are refused like purchases: not enough tickets, limits, bad input, unknown ids', async (t) => {
    const id = await createLimited(app, 10, { max_per_purchase: 4, max_per_user: 6 })
    const over = await hold(app, id, { quantity: 5 })
    t.equal(over.statusCode, 422)
    t.same(over.json(), { statusCode: 422, error: 'Unprocessable Entity', message: 'At most 4 tickets can be bought or held at once', code: 'QUANTITY_OVER_LIMIT', requested: 5, limit: 4 })
    t.equal((await hold(app, id, { quantity: 4 })).statusCode, 201)
    t.equal((await buy(app, id, { quantity: 2 })).statusCode, 201)
    const limited = await hold(app, id, { quantity: 1 })
    t.equal(limited.statusCode, 409)
    t.match(limited.json(), { code: 'USER_LIMIT_REACHED', limit: 6, used: 6, requested: 1, message: 'A user may buy or hold at most 6 tickets of this option; this user has 6' })
    t.match(limited.json().reservation_id, /^[0-9a-f-]{36}$/)
    const bought = await buy(app, id, { quantity: 1 })
    t.equal(bought.statusCode, 409)
    t.match(bought.json(), { code: 'USER_LIMIT_REACHED', limit: 6, used: 6 })
    t.equal((await buy(app, id, { quantity: 4, userId: OTHER })).statusCode, 201, 'another user has a limit of their own')
    const empty = await hold(app, id, { quantity: 1, user_id: randomUUID() })
    t.equal(empty.statusCode, 409)
    t.match(empty.json(), { code: 'NOT_ENOUGH_TICKETS', available: 0, requested: 1 })

    for (const body of [{ hold_seconds: 9 }, { hold_seconds: 3601 }, { hold_seconds: '60' }, { quantity: 0 }, { user_id: 'x' }, { extra: 1 }]) {
      const res = await hold(app, id, body)
      t.equal(res.statusCode, 400, JSON.stringify(body))
    }
    t.equal((await hold(app, randomUUID())).statusCode, 404, 'unknown option')
    t.match((await get(app, `/ticket_options/${id}/reservations/${randomUUID()}`)).json(), { statusCode: 404, code: 'RESERVATION_NOT_FOUND' })
    t.match((await act(app, `/ticket_options/${id}/reservations/${randomUUID()}/confirm`)).json(), { statusCode: 404, code: 'RESERVATION_NOT_FOUND' })
    t.equal((await act(app, `/ticket_options/${id}/reservations/${randomUUID()}/release`)).statusCode, 404)
    await balanced(t)
  })

  t.test('an Idempotency-Key on a hold holds once; the same key on a purchase is another request', async (t) => {
    const id = await createOption(app, 10)
    const answers = await Promise.all(Array.from({ length: 10 }, async () => await hold(app, id, { quantity: 2 }, { 'idempotency-key': 'hold-1' })))
    t.same(new Set(answers.map((a) => a.body)).size, 1, 'ten identical answers')
    t.equal(answers[0]?.statusCode, 201)
    t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 8, 'held once')
    t.equal((await hold(app, id, { quantity: 3 }, { 'idempotency-key': 'hold-1' })).statusCode, 422, 'another quantity')
    t.equal((await buy(app, id, { quantity: 2, key: 'hold-1' })).statusCode, 422, 'a purchase with the key of a hold')
    await balanced(t)
  })

  t.test('cancel: the tickets come back once, the status route shows it, a rejected purchase is not cancellable', async (t) => {
    const id = await createOption(app, 4)
    const purchase = (await buy(app, id, { quantity: 3 })).json()
    const refused = (await buy(app, id, { quantity: 3 })).json()
    t.equal((await act(app, `/ticket_options/${id}/purchases/${purchase.id}/cancel`, OTHER)).statusCode, 404, 'another user')
    t.equal((await act(app, `/ticket_options/${id}/purchases/${randomUUID()}/cancel`)).statusCode, 404, 'unknown purchase')
    const cancelled = await act(app, `/ticket_options/${id}/purchases/${purchase.id}/cancel`)
    t.equal(cancelled.statusCode, 200)
    t.match(cancelled.json(), { id: purchase.id, quantity: 3, status: 'cancelled' })
    t.ok(!Number.isNaN(Date.parse(cancelled.json().cancelled_at)))
    const again = await act(app, `/ticket_options/${id}/purchases/${purchase.id}/cancel`)
    t.equal(again.statusCode, 200)
    t.same(again.json(), cancelled.json(), 'the same body again')
    t.same((await get(app, `/ticket_options/${id}/purchases/${purchase.id}`)).json(), cancelled.json(), 'the status route says cancelled')
    t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 4, 'returned once')
    const notCancellable = await act(app, `/ticket_options/${id}/purchases/${refused.purchase_id}/cancel`)
    t.equal(notCancellable.statusCode, 409)
    t.same(notCancellable.json(), { statusCode: 409, error: 'Conflict', message: 'The purchase is rejected and cannot be cancelled', code: 'NOT_CANCELLABLE', status: 'rejected' })
    t.same((await get(app, `/ticket_options/${id}/ledger`)).json(), { ticket_option_id: id, initial_allocation: 4, available: 4, held: 0, sold: 0, cancelled: 3, balanced: true })
    t.equal((await get(app, `/ticket_options/${randomUUID()}/ledger`)).statusCode, 404)
    await balanced(t)
  })

  t.test('max_per_user holds under 50 concurrent requests of one user', async (t) => {
    const id = await createLimited(app, 1000, { max_per_user: 7 })
    const answers = await Promise.all(Array.from({ length: 50 }, async (_, i) => i % 2 === 0 ? await buy(app, id, { quantity: 1 + (i % 3) }) : await hold(app, id, { quantity: 1 + (i % 3) })))
    const ok = answers.filter((a) => a.statusCode === 201)
    const taken = ok.reduce((sum, a) => sum + (a.json().quantity as number), 0)
    t.ok(taken <= 7, `the user has ${taken} tickets`)
    t.ok(taken >= 5, 'and got close to the limit')
    t.same(answers.filter((a) => a.statusCode !== 201).map((a) => [a.statusCode, a.json().code]).filter(([, code]) => code !== 'USER_LIMIT_REACHED'), [], 'every refusal is USER_LIMIT_REACHED')
    const { rows } = await sql.query(
      `select coalesce((select sum(quantity) from purchases where ticket_option_id = $1 and user_id = $2 and status = 'succeeded'), 0)
            + coalesce((select sum(quantity) from reservations where ticket_option_id = $1 and user_id = $2 and status = 'held'), 0) as used`, [id, USER])
    t.equal(Number(rows[0].used), taken, 'as recorded')
    await balanced(t)
  })

  t.test('a cancellation retried concurrently returns the tickets once', async (t) => {
    const id = await createOption(app, 10)
    const purchase = (await buy(app, id, { quantity: 4 })).json()
    const answers = await Promise.all(Array.from({ length: 20 }, async () => await act(app, `/ticket_options/${id}/purchases/${purchase.id}/cancel`)))
    t.same(answers.map((a) => a.statusCode), Array(20).fill(200))
    t.equal(new Set(answers.map((a) => a.json().cancelled_at)).size, 1, 'one cancellation')
    t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 10)
    await balanced(t)
  })

  t.test('confirm racing expiry, 100 times: exactly one wins each, and the books balance', async (t) => {
    const id = await createOption(app, 100)
    const holds = await Promise.all(Array.from({ length: 100 }, async () => (await hold(app, id, { quantity: 1 })).json().id as string))
    // The holds end one after another over the next second, while the confirmations arrive.
    await sql.query(
      `update reservations r set expires_at = now() + make_interval(secs => o.n / 100.0)
         from (select id, row_number() over (order by id) as n from reservations where ticket_option_id = $1) o
        where r.id = o.id`, [id])
    await new Promise((resolve) => setTimeout(resolve, 400))
    const answers = await Promise.all(holds.map(async (rid) => await act(app, `/ticket_options/${id}/reservations/${rid}/confirm`)))
    const { rows } = await sql.query<{ id: string, status: string, purchase_id: string | null }>('select id, status, purchase_id from reservations where ticket_option_id = $1', [id])
    const byId = new Map(rows.map((r) => [r.id, r]))
    const wrong = holds.filter((rid, i) => {
      const answer = answers[i]
      const row = byId.get(rid)
      if (answer?.statusCode === 201) return row?.status !== 'confirmed' || answer.json().id !== row.purchase_id
      if (answer?.statusCode === 409) return row?.status !== 'expired' && row?.status !== 'held'
      return true
    })
    t.same(wrong, [], 'every 201 is a confirmed hold with its purchase, every 409 a hold that expired')
    const confirmed = answers.filter((a) => a.statusCode === 201).length
    t.comment(`confirmed ${confirmed}, refused ${answers.length - confirmed}`)
    await waitFor(async () => (await sql.query("select count(*)::int as n from reservations where ticket_option_id = $1 and status = 'held'", [id])).rows[0].n, (n) => n === 0, 5000)
    const ledger = (await get(app, `/ticket_options/${id}/ledger`)).json()
    t.match(ledger, { held: 0, sold: confirmed, available: 100 - confirmed, balanced: true })
    await balanced(t)
  })
})

eachQueueBackend(t, 'a hold expires with no request, across a worker restart, within 5 s of expires_at', async (t, backendEnv) => {
  const { app, config, sql } = await setUp(t, { worker: false, env: backendEnv })
  const id = await createOption(app, 5)
  const first = await startTestWorker(t, config)
  const reservation = (await hold(app, id, { quantity: 2, hold_seconds: 10 })).json()
  t.equal(reservation.status, 'held')
  await first.close()
  // Shortened in the database (the contract's shortest hold is 10 s); no worker runs as it passes.
  const { rows: [{ expires_at: expiresAt }] } = await sql.query("update reservations set expires_at = now() + interval '1 second' where id = $1 returning expires_at", [reservation.id])
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.equal((await get(app, `/ticket_options/${id}/reservations/${reservation.id}`)).json().status, 'held', 'nothing expires it while no worker runs')

  await startTestWorker(t, config)
  const expired = await waitFor(async () => (await get(app, `/ticket_options/${id}/reservations/${reservation.id}`)).json(), (r) => r.status === 'expired', 10_000)
  t.equal(expired.status, 'expired')
  const { rows: [{ lag }] } = await sql.query('select extract(epoch from decided_at - expires_at) * 1000 as lag from reservations where id = $1', [reservation.id])
  t.comment(`expired ${Math.round(Number(lag))} ms after expires_at ${String(expiresAt)} (the worker restarted after it)`)
  t.equal((await get(app, `/ticket_options/${id}`)).json().allocation, 5, 'its tickets are available again')
  const confirm = await act(app, `/ticket_options/${id}/reservations/${reservation.id}/confirm`)
  t.equal(confirm.statusCode, 409)
  t.match(confirm.json(), { code: 'RESERVATION_NOT_ACTIVE', status: 'expired' })

  // And with the worker running, a hold past its time is back within the 5 s the contract allows.
  const second = (await hold(app, id, { quantity: 1 })).json()
  await sql.query("update reservations set expires_at = now() + interval '500 milliseconds' where id = $1", [second.id])
  await waitFor(async () => (await get(app, `/ticket_options/${id}/reservations/${second.id}`)).json().status, (s) => s === 'expired', 10_000)
  const { rows: [{ lag: liveLag }] } = await sql.query('select extract(epoch from decided_at - expires_at) * 1000 as lag from reservations where id = $1', [second.id])
  t.ok(Number(liveLag) < 5000, `expired ${Math.round(Number(liveLag))} ms after expires_at`)
  t.same(await unbalancedOptions(sql), [])
})

t.test('the scheduled ledger check reports an option that does not balance, in /metrics and at error', async (t) => {
  const environment = await createTestEnvironment(t, { RECONCILE_INTERVAL_MS: '1000' })
  const lines: Array<{ level: number, msg: string, ledger?: Record<string, unknown> }> = []
  const app = await buildApp(environment.config, { logger: { level: 'error', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  t.teardown(async () => { await app.close() })
  await startTestWorker(t, environment.config)
  const { sql } = environment
  const id = await createOption(app, 5)
  t.equal((await buy(app, id, { quantity: 2 })).statusCode, 201)
  const gauge = async (): Promise<number> => Number(/^ticket_options_unbalanced (\d+)$/m.exec((await get(app, '/metrics')).body)?.[1])
  await new Promise((resolve) => setTimeout(resolve, 1500))
  t.equal(await gauge(), 0, 'all is well')
  // What only a bug (or a hand in the database) could do: a ticket appears from nowhere.
  await sql.query('alter table ticket_options drop constraint ticket_options_within_initial')
  await sql.query('update ticket_options set allocation = allocation + 1, updated_at = now() where id = $1', [id])
  t.equal(await waitFor(gauge, (n) => n === 1, 5000), 1, 'ticket_options_unbalanced counts it')
  t.match(lines.find((l) => l.msg.startsWith('ticket option does not balance')), { level: 50, ledger: { ticket_option_id: id, available: 4, sold: 2, balanced: false } }, 'and it is logged at error')
  t.match((await get(app, `/ticket_options/${id}/ledger`)).json(), { available: 4, sold: 2, balanced: false })
})
