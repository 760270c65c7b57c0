/**
 * The sale's transaction as the worker runs it (shared/db.ts, shared/purchases/sale-store.ts):
 * BEGIN, the option's row lock and the reads go out pipelined, in one round
 * trip, and the statements every batch runs are prepared once per connection.
 * What must not change with that: the reads run after the lock is granted,
 * so they see what the lock's previous holder committed.
 */
import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import { createPool, DedicatedConnection, withTransaction } from '../../shared/db'
import { applyPurchasesAtOnce, applySaleBatch, AT_ONCE_SESSION, findPurchase, type PurchaseRecord } from '../../shared/purchases/sale-store'
import type { PurchaseRequest } from '../../shared/purchases/sale-request'
import { createTicketOption } from '../../shared/ticket-options'
import { createTestEnvironment, unbalancedOptions } from '../support/environment'
import { sleep, waitFor } from '../support/wait'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

function purchase (ticketOptionId: string, quantity: number, line: number): PurchaseRequest {
  return { purchaseId: randomUUID(), ticketOptionId, userId: USER, quantity, requestId: `req-${line}`, enqueuedAt: Date.now(), line }
}

/** `size` purchases of `quantity` each: a batch at once of one purchase takes a statement of its own (sale-store.ts AT_ONCE_ONE_STATEMENT). */
function purchases (ticketOptionId: string, size: number, quantity: number, line: number): PurchaseRequest[] {
  return Array.from({ length: size }, (_, i) => purchase(ticketOptionId, quantity, line * 10 + i))
}

/** What every test of a batch at once starts from: the at-once connection and an option of 5, as this process left it. */
async function atOnceSetUp (t: Test, name: string, maxPerPurchase: number | null) {
  const { config, sql } = await createTestEnvironment(t)
  const db = new DedicatedConnection(createPool(config.databaseUrl, 1, pino({ level: 'silent' }), AT_ONCE_SESSION))
  t.teardown(async () => { await db.end() })
  const option = await createTicketOption(sql, { name, desc: '', allocation: 5, maxPerPurchase, maxPerUser: null })
  const expected = { available: 5, held: 0, maxPerPurchase, maxPerUser: null }
  return { sql, db, option, expected }
}

t.test('a batch that waits for the option\'s lock reads what its holder committed: a redelivered purchase keeps its outcome', async (t) => {
  const { config, sql } = await createTestEnvironment(t)
  const db = createPool(config.databaseUrl, 4, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })
  const option = await createTicketOption(sql, { name: 'lock wait', desc: '', allocation: 5, maxPerPurchase: null, maxPerUser: null })
  const first = purchase(option.id, 3, 1)

  // Another transaction holds the lock and records the purchase (a first delivery, on another worker).
  const holder = await sql.connect()
  t.teardown(() => { holder.release() })
  await holder.query('begin')
  await holder.query('select 1 from ticket_options where id = $1 for update', [option.id])
  await holder.query(
    'insert into purchases (id, ticket_option_id, user_id, quantity, status, request_id) values ($1, $2, $3, 3, \'succeeded\', \'first delivery\')',
    [first.purchaseId, option.id, USER])
  await holder.query('update ticket_options set allocation = allocation - 3 where id = $1', [option.id])

  // The redelivery, with one more purchase behind it, waits for that lock.
  const second = purchase(option.id, 2, 2)
  const batch = withTransaction(db, async (client) => await applySaleBatch(client, option.id, [first, second]))
  // Polled, not slept for: on a loaded machine the batch may take a while to reach the lock.
  const waiting = await waitFor(async () => (await sql.query("select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()")).rows[0].n as number, (n) => n === 1, 5000, 20)
  await sleep(100)
  t.equal(waiting, 1, 'the batch waits for the lock')
  await holder.query('commit')

  const outcomes = await batch as PurchaseRecord[]
  t.match(outcomes[0], { id: first.purchaseId, status: 'succeeded', quantity: 3 }, 'the recorded outcome, not a second purchase (nor a duplicate key error)')
  t.match(outcomes[1], { id: second.purchaseId, status: 'succeeded', quantity: 2 }, 'decided on what is left after the holder\'s commit')
  const { rows } = await sql.query('select allocation, (select count(*)::int from purchases where ticket_option_id = $1) as purchases from ticket_options where id = $1', [option.id])
  t.same(rows[0], { allocation: 0, purchases: 2 })
  t.same(await unbalancedOptions(sql), [])
})

t.test('per-user limits: read beside the lock, and still read after it for an option learnt as unlimited; a missing option fails the batch', async (t) => {
  const { config, sql } = await createTestEnvironment(t)
  const db = createPool(config.databaseUrl, 2, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })
  const apply = async (optionId: string, request: PurchaseRequest): Promise<PurchaseRecord> =>
    (await withTransaction(db, async (client) => await applySaleBatch(client, optionId, [request])))[0] as PurchaseRecord

  const limited = await createTicketOption(sql, { name: 'limited', desc: '', allocation: 10, maxPerPurchase: null, maxPerUser: 3 })
  const decided = [await apply(limited.id, purchase(limited.id, 2, 1)), await apply(limited.id, purchase(limited.id, 2, 2))]
  t.same(decided.map((o) => [o.status, o.reason, o.used]), [['succeeded', null, null], ['rejected', 'user_limit_reached', 2]], 'the second would take the user past 3')

  // Learnt as unlimited by its first batch; then the limit appears (by hand: no route changes one).
  const open = await createTicketOption(sql, { name: 'open', desc: '', allocation: 10, maxPerPurchase: null, maxPerUser: null })
  t.equal((await apply(open.id, purchase(open.id, 2, 1))).status, 'succeeded')
  await sql.query('update ticket_options set max_per_user = 3 where id = $1', [open.id])
  const late = await apply(open.id, purchase(open.id, 2, 2))
  t.same([late.status, late.reason, late.used], ['rejected', 'user_limit_reached', 2], 'its usage is read after the lock once the limit shows')

  const missing = randomUUID()
  await t.rejects(apply(missing, purchase(missing, 1, 1)), { name: 'UnknownTicketOptionError' })
  t.equal((await sql.query('select count(*)::int as n from purchases where ticket_option_id = $1', [missing])).rows[0].n, 0, 'nothing recorded for it')
  t.same(await unbalancedOptions(sql), [])
})

t.test('the sale\'s statements are planned once per connection, by index even when the tables were analyzed tiny; other queries keep PostgreSQL\'s default', async (t) => {
  const { config, sql } = await createTestEnvironment(t)
  const option = await createTicketOption(sql, { name: 'generic plans', desc: '', allocation: 1000, maxPerPurchase: null, maxPerUser: 50 })
  // Tiny tables, analyzed: planned by their statistics, every statement here would scan them whole.
  const warm = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  for (let line = 1; line <= 30; line++) {
    await withTransaction(warm, async (client) => await applySaleBatch(client, option.id, [purchase(option.id, 1, line)]))
  }
  await warm.end()
  await sql.query('analyze ticket_options, purchases, reservations')

  // One connection, so every batch below runs on the session whose plans are read.
  const db = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })
  // More than PostgreSQL's five custom plans before it would consider a generic one.
  for (let line = 31; line <= 38; line++) {
    await withTransaction(db, async (client) => await applySaleBatch(client, option.id, [purchase(option.id, 1, line)]))
  }
  const hold = { kind: 'hold' as const, reservationId: randomUUID(), ticketOptionId: option.id, userId: USER, quantity: 2, holdSeconds: 60, requestId: 'hold', enqueuedAt: Date.now() }
  const confirm = { kind: 'confirm' as const, reservationId: hold.reservationId, purchaseId: randomUUID(), ticketOptionId: option.id, userId: USER, requestId: 'confirm', enqueuedAt: Date.now() }
  await withTransaction(db, async (client) => await applySaleBatch(client, option.id, [hold]))
  const [confirmed] = await withTransaction(db, async (client) => await applySaleBatch(client, option.id, [confirm]))
  t.match(confirmed, { kind: 'confirm', changed: true, reservation: { status: 'confirmed' } }, 'the confirmation changed the hold')

  const client = await db.connect()
  try {
    t.equal((await client.query('show plan_cache_mode')).rows[0].plan_cache_mode, 'auto', 'outside the sale\'s transactions: PostgreSQL\'s default')
    t.equal((await client.query('show enable_seqscan')).rows[0].enable_seqscan, 'on')
    const { rows } = await client.query<{ name: string, generic_plans: string, custom_plans: string }>(
      "select name, generic_plans::text, custom_plans::text from pg_prepared_statements where name like 'sale-%' order by name")
    t.same(rows.map((r) => r.name), ['sale-lock-option', 'sale-planned-once', 'sale-read-purchases', 'sale-read-reservations', 'sale-read-usage', 'sale-write-batch'])
    for (const r of rows) t.equal(r.custom_plans, '0', `${r.name}: never planned again per execution`)
    t.equal(rows.find((r) => r.name === 'sale-write-batch')?.generic_plans, '10', 'the write: one plan, run for each of the ten batches')

    // The plans kept for the next batches, as a batch's transaction uses them.
    await client.query('begin')
    await client.query("select set_config('plan_cache_mode', 'force_generic_plan', true)")
    const ids = `'{${randomUUID()}}'::uuid[]`
    const none = "'{}'"
    const plans = {
      'sale-lock-option': `'${option.id}'::uuid`,
      'sale-read-purchases': ids,
      'sale-read-reservations': ids,
      'sale-read-usage': `'${option.id}'::uuid, ${ids}`,
      'sale-write-batch': [`'${option.id}'::uuid`, ...Array(24).fill(none), '1', '0'].join(', '),
    }
    for (const [name, args] of Object.entries(plans)) {
      const plan = (await client.query(`explain execute "${name}"(${args})`)).rows.map((r) => r['QUERY PLAN'] as string).join('\n')
      t.notMatch(plan, /Seq Scan/, `${name}: by index`)
    }
    await client.query('rollback')
  } finally {
    client.release()
  }
  const { rows } = await sql.query('select allocation, held from ticket_options where id = $1', [option.id])
  t.same(rows[0], { allocation: 960, held: 0 })
  t.same(await unbalancedOptions(sql), [])
})

t.test('a batch at once: decided from the expected option, written with one statement only if the locked row is still so; else nothing is written', async (t) => {
  const { sql, db, option, expected } = await atOnceSetUp(t, 'at once', 3)
  const count = async (): Promise<number> => Number((await sql.query('select count(*) from purchases where ticket_option_id = $1', [option.id])).rows[0].count)

  const [a, b, c] = [purchase(option.id, 2, 1), purchase(option.id, 4, 2), purchase(option.id, 1, 3)]
  const applied = await applyPurchasesAtOnce(db, option.id, [a, b, c], expected, 2000)
  t.same(applied.kind, 'applied')
  if (applied.kind !== 'applied') return
  t.match(applied.outcomes, [
    { id: a.purchaseId, status: 'succeeded', quantity: 2, reason: null },
    { id: b.purchaseId, status: 'rejected', reason: 'quantity_over_limit' },
    { id: c.purchaseId, status: 'succeeded', quantity: 1 },
  ], 'each decided by the same rules as any batch, in order')
  t.same(Object.keys(applied.outcomes[0] as object).sort(), ['available', 'cancelled_at', 'created_at', 'id', 'quantity', 'reason', 'reservation_id', 'status', 'ticket_option_id', 'used', 'user_id'], 'a purchase record, nothing of the lock beside it')
  // Built from what was decided and the row's id and time: exactly the record as stored.
  t.same(await Promise.all([a, b, c].map(async (p) => await findPurchase(sql, option.id, p.purchaseId))), applied.outcomes, 'each outcome is the purchase as PostgreSQL stored it')
  t.same(applied.after, { ...expected, available: 2 })
  t.same((await sql.query('select allocation, held from ticket_options where id = $1', [option.id])).rows[0], { allocation: 2, held: 0 }, 'committed')

  // Someone else (a worker's batch) sold one meanwhile: expecting 2 left is stale now.
  await withTransaction(sql, async (client) => await applySaleBatch(client, option.id, [purchase(option.id, 1, 4)]))
  for (const size of [1, 2]) {
    const stale = await applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 1, 5), applied.after, 2000)
    t.same(stale, { kind: 'stale', found: { ...expected, available: 1 } }, `${size} purchase(s): the option as it is`)
    t.equal(await count(), 4, 'nothing written')
  }
  t.same((await sql.query('select allocation from ticket_options where id = $1', [option.id])).rows[0], { allocation: 1 })
  t.same(await unbalancedOptions(sql), [])

  const nowhere = randomUUID()
  for (const size of [1, 2]) {
    await t.rejects(applyPurchasesAtOnce(db, nowhere, purchases(nowhere, size, 1, 6), expected, 2000), { name: 'UnknownTicketOptionError' }, `${size} purchase(s) of an option that does not exist`)
  }
  await t.rejects(applyPurchasesAtOnce(db, option.id, [purchase(option.id, 1, 7)], { ...expected, maxPerUser: 2 }, 2000), /per-user limit/, 'an option with a per-user limit needs its usage read first')
})

t.test('a batch at once of one purchase (a lone buyer\'s) writes it as a batch of several would, succeeded or rejected', async (t) => {
  const { sql, db, option, expected } = await atOnceSetUp(t, 'at once, one', 3)
  const bought = purchase(option.id, 3, 1)
  const applied = await applyPurchasesAtOnce(db, option.id, [bought], expected, 2000)
  t.match(applied, { kind: 'applied', outcomes: [{ id: bought.purchaseId, status: 'succeeded', quantity: 3, reason: null, available: null, used: null }], after: { ...expected, available: 2 } })
  if (applied.kind !== 'applied') return
  t.same([await findPurchase(sql, option.id, bought.purchaseId)], applied.outcomes, 'the outcome is the purchase as PostgreSQL stored it')
  const stored = await sql.query('select request_id, (extract(epoch from enqueued_at) * 1000)::bigint as enqueued_at from purchases where id = $1', [bought.purchaseId])
  t.same(stored.rows[0], { request_id: 'req-1', enqueued_at: String(bought.enqueuedAt) }, 'with its request id and arrival time')

  for (const [request, reason] of [[purchase(option.id, 4, 2), 'quantity_over_limit'], [purchase(option.id, 3, 3), 'not_enough_tickets']] as const) {
    const refused = await applyPurchasesAtOnce(db, option.id, [request], { ...expected, available: 2 }, 2000)
    t.match(refused, { kind: 'applied', outcomes: [{ id: request.purchaseId, status: 'rejected', reason, available: 2 }], after: { ...expected, available: 2 } }, reason)
    if (refused.kind === 'applied') t.same([await findPurchase(sql, option.id, request.purchaseId)], refused.outcomes, `${reason}: recorded as answered`)
  }
  t.same((await sql.query('select allocation, held from ticket_options where id = $1', [option.id])).rows[0], { allocation: 2, held: 0 }, 'only the succeeded one took tickets')
  t.same(await unbalancedOptions(sql), [])
})

for (const size of [1, 2]) {
  t.test(`a batch at once of ${size} on a lease held from an earlier batch writes nothing once a request has queued under that lease (its fence is up)`, async (t) => {
    const { sql, db, option, expected } = await atOnceSetUp(t, 'fenced', null)
    await sql.query('insert into direct_fences (ticket_option_id, token) values ($1, $2)', [option.id, 'lease-a'])

    t.same(await applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 1, 1), expected, 2000, 'lease-a'), { kind: 'fenced' }, 'its own lease\'s fence is up')
    t.same((await sql.query('select allocation, (select count(*)::int from purchases where ticket_option_id = $1) as purchases from ticket_options where id = $1', [option.id])).rows[0], { allocation: 5, purchases: 0 }, 'nothing written')
    t.match(await applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 1, 2), expected, 2000, 'lease-b'), { kind: 'applied', after: { available: 5 - size } }, 'an earlier lease\'s fence does not stop a later lease')
    t.match(await applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 1, 3), { ...expected, available: 5 - size }, 2000), { kind: 'applied', after: { available: 5 - 2 * size } }, 'nor a batch on a lease just claimed')
    t.same(await unbalancedOptions(sql), [])
  })
}

for (const size of [1, 2]) {
  t.test(`a batch at once of ${size} that waits for the option's lock checks the row as its holder committed it, and writes nothing when the lock came too late`, async (t) => {
    const { sql, db, option, expected } = await atOnceSetUp(t, 'at once, lock wait', null)
    const holder = await sql.connect()
    t.teardown(() => { holder.release() })
    const lockWaiters = async (): Promise<number> => (await sql.query("select count(*)::int as n from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()")).rows[0].n as number

    // The holder sells 2 and commits while the batch waits: the batch, started before that commit, must see it.
    await holder.query('begin')
    await holder.query('update ticket_options set allocation = allocation - 2 where id = $1', [option.id])
    await holder.query("insert into purchases (id, ticket_option_id, user_id, quantity, status, request_id) values ($1, $2, $3, 2, 'succeeded', 'holder')", [randomUUID(), option.id, USER])
    const waiting = applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 4, 1), expected, 10_000)
    await waitFor(lockWaiters, (n) => n === 1, 5000, 20)
    await holder.query('commit')
    t.same(await waiting, { kind: 'stale', found: { ...expected, available: 3 } }, 'stale: it would have sold 4 of 3')
    t.same((await sql.query('select allocation, (select count(*)::int from purchases where ticket_option_id = $1) as purchases from ticket_options where id = $1', [option.id])).rows[0], { allocation: 3, purchases: 1 }, 'only the holder\'s')

    // The holder keeps the lock past the batch's fence: nothing is written, even though the option is as expected.
    await holder.query('begin')
    await holder.query('select 1 from ticket_options where id = $1 for update', [option.id])
    const late = applyPurchasesAtOnce(db, option.id, purchases(option.id, size, 1, 2), { ...expected, available: 3 }, 150)
    await waitFor(lockWaiters, (n) => n === 1, 5000, 20)
    await sleep(300)
    await holder.query('commit')
    t.same(await late, { kind: 'late' })
    t.same((await sql.query('select allocation, (select count(*)::int from purchases where ticket_option_id = $1) as purchases from ticket_options where id = $1', [option.id])).rows[0], { allocation: 3, purchases: 1 }, 'nothing written')
    t.same(await unbalancedOptions(sql), [])
  })
}
