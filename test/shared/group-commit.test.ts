/**
 * Group commit (shared/purchases/group-commit.ts) against a real
 * PostgreSQL: batches of different options ready at the same moment share
 * one transaction; a batch that fails never takes the others with it, and
 * none is ever half-written.
 */
import t from 'tap'
import pino from 'pino'
import { createPool, type DbClient } from '../../shared/db'
import { createTicketOption } from '../../shared/ticket-options'
import { GroupCommit } from '../../shared/purchases/group-commit'
import { createTestEnvironment, type Teardown } from '../support/environment'

/** A batch's stand-in: takes `n` of the option's tickets under its row lock and says in which transaction. */
function take (optionId: string, n: number) {
  return async (client: DbClient): Promise<string> => {
    await client.query('select 1 from ticket_options where id = $1 for update', [optionId])
    const { rows } = await client.query<{ xid: string }>('update ticket_options set allocation = allocation - $2 where id = $1 returning txid_current()::text as xid', [optionId, n])
    return rows[0]?.xid as string
  }
}

async function setUp (t: Teardown, options: number) {
  const { config, sql } = await createTestEnvironment(t)
  const db = createPool(config.databaseUrl, 4, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })
  const ids = await Promise.all(Array.from({ length: options }, async (_, i) => (await createTicketOption(sql, { name: `o${i}`, desc: '', allocation: 10, maxPerPurchase: null, maxPerUser: null })).id))
  const left = async (): Promise<number[]> => {
    const { rows } = await sql.query<{ id: string, allocation: number }>('select id, allocation from ticket_options where id = any($1)', [ids])
    return ids.map((id) => rows.find((r) => r.id === id)?.allocation as number)
  }
  return { db, sql, ids, left }
}

t.test('batches ready at the same moment share one transaction; one ready alone runs alone', async (t) => {
  const { db, ids, left } = await setUp(t, 6)
  const group = new GroupCommit(db, 1)
  const xids = await Promise.all(ids.map(async (id) => await group.run(take(id, 2))))
  t.equal(new Set(xids).size, 1, 'six options, one transaction')
  t.same(await left(), [8, 8, 8, 8, 8, 8])
  t.same(group.stats, { groups: 1, batches: 6, largest: 6 })

  const alone = await group.run(take(ids[0] as string, 1))
  t.not(alone, xids[0], 'a batch alone gets a transaction of its own')
  t.same(group.stats, { groups: 2, batches: 7, largest: 6 })

  // With one group in flight at most, the batches that come meanwhile go together as the next one.
  const first = group.run(take(ids[0] as string, 1))
  await new Promise((resolve) => setImmediate(resolve))
  const next = await Promise.all(ids.slice(1).map(async (id) => await group.run(take(id, 1))))
  await first
  t.equal(new Set(next).size, 1, 'the five that waited shared the next transaction')
  t.same(await left(), [6, 7, 7, 7, 7, 7])
})

t.test('a batch PostgreSQL refuses gets its error; the others of its group are applied, each once', async (t) => {
  const { db, ids, left } = await setUp(t, 4)
  const group = new GroupCommit(db, 2)
  const refused = ids[1] as string
  const results = await Promise.allSettled(ids.map(async (id) => await group.run(id === refused ? take(id, 11) : take(id, 3))))
  t.match(results[1], { status: 'rejected', reason: { code: '23514' } }, 'the refused one (allocation would go below 0: 23514) gets its own error')
  t.same(results.filter((r) => r.status === 'fulfilled').length, 3, 'the others succeed')
  t.same(await left(), [7, 10, 7, 7], 'applied once each; nothing of the refused one')
})

t.test('a batch that fails outside PostgreSQL rolls back its own statements, and the others still commit', async (t) => {
  const { db, ids, left } = await setUp(t, 3)
  const group = new GroupCommit(db, 1)
  const failing = async (client: DbClient): Promise<string> => {
    await take(ids[0] as string, 5)(client)
    throw new Error('the queue read failed after the write')
  }
  const results = await Promise.allSettled([group.run(failing), group.run(take(ids[1] as string, 1)), group.run(take(ids[2] as string, 1))])
  t.match(results[0], { status: 'rejected', reason: { message: 'the queue read failed after the write' } })
  t.same(results.slice(1).map((r) => r.status), ['fulfilled', 'fulfilled'])
  t.same(await left(), [10, 9, 9], 'the failed batch wrote nothing')
})

t.test('a connection lost mid-group: the batch that met it gets the error, the others are applied alone, nothing twice', async (t) => {
  const { db, ids, left } = await setUp(t, 3)
  const group = new GroupCommit(db, 1)
  const outage = async (client: DbClient): Promise<string> => {
    await take(ids[0] as string, 1)(client)
    await client.query('select pg_terminate_backend(pg_backend_pid())')
    return 'unreachable'
  }
  const results = await Promise.allSettled([group.run(take(ids[1] as string, 1)), group.run(outage), group.run(take(ids[2] as string, 1))])
  t.match(results[1], { status: 'rejected', reason: { code: '57P01' } }, 'an outage, which its processor retries')
  t.same([results[0]?.status, results[2]?.status], ['fulfilled', 'fulfilled'], 'the others, applied again on fresh connections')
  t.same(await left(), [10, 9, 9], 'the lost transaction committed nothing; the others once each')
  await group.run(take(ids[0] as string, 1))
  t.same(await left(), [9, 9, 9], 'the pool recovers')
})

t.test('at least one group at a time', async (t) => {
  const { db } = await setUp(t, 0)
  t.throws(() => new GroupCommit(db, 0), /at least 1/)
})
