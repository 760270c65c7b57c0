/**
 * shared/db.ts DedicatedConnection: one connection kept checked out for its
 * named statements (as pg's own Query, no config copy), each prepared once
 * per connection, PostgreSQL's errors passed on, a failed connection replaced.
 */
import t from 'tap'
import pino from 'pino'
import { createPool, DedicatedConnection } from '../../shared/db'
import { createTestEnvironment } from '../support/environment'
import { waitFor } from '../support/wait'

t.test('a DedicatedConnection runs every statement on one connection, prepared once, and keeps it after a statement fails', async (t) => {
  const { config } = await createTestEnvironment(t)
  const pool = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  const connection = new DedicatedConnection(pool)
  t.teardown(async () => { await connection.end() })
  const pid = async (): Promise<number> => (await connection.run<{ pid: number }>('test-pid', 'select pg_backend_pid() as pid', [])).rows[0]?.pid as number
  const first = await pid()
  t.same((await connection.run<{ sum: number }>('test-sum', 'select $1::integer + $2::integer as sum', [40, 2])).rows, [{ sum: 42 }])
  await t.rejects(connection.run('test-divide', 'select 1 / $1::integer as q', [0]), { code: '22012' }, 'PostgreSQL\'s error, as it said it')
  t.same((await connection.run<{ q: number }>('test-divide', 'select 1 / $1::integer as q', [1])).rows, [{ q: 1 }], 'the failed statement runs again')
  t.equal(await pid(), first, 'on the same connection')
  const prepared = await connection.run<{ name: string }>('test-prepared', 'select name from pg_prepared_statements order by name', [])
  t.same(prepared.rows.map((r) => r.name), ['test-divide', 'test-pid', 'test-prepared', 'test-sum'], 'each statement prepared once')
  t.equal(pool.totalCount, 1)
  t.equal(pool.idleCount, 0, 'kept checked out between statements')
})

t.test('a DedicatedConnection whose connection fails connects anew for its next statement', async (t) => {
  const { config, sql } = await createTestEnvironment(t)
  const pool = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  const connection = new DedicatedConnection(pool)
  t.teardown(async () => { await connection.end() })
  const pid = async (): Promise<number> => (await connection.run<{ pid: number }>('test-pid', 'select pg_backend_pid() as pid', [])).rows[0]?.pid as number
  const first = await pid()

  // Killed between statements (an admin, a restart): the next statement finds a new connection.
  await sql.query('select pg_terminate_backend($1)', [first])
  await waitFor(async () => pool.totalCount, (n) => n === 0, 5000, 10)
  const second = await pid()
  t.not(second, first, 'a new backend')

  // Killed under a statement: that statement fails, the next one connects anew.
  const sleeping = connection.run('test-sleep', 'select pg_sleep(5)', [])
  await waitFor(async () => (await sql.query("select count(*)::int as n from pg_stat_activity where pid = $1 and query like 'select pg_sleep%'", [second])).rows[0].n as number, (n) => n === 1, 5000, 10)
  await sql.query('select pg_terminate_backend($1)', [second])
  await t.rejects(sleeping, 'the statement under the failed connection fails')
  const third = await pid()
  t.not(third, second, 'and the next one runs on a new backend')
  t.equal(pool.totalCount, 1, 'the failed connections were closed')
})

t.test('a DedicatedConnection that cannot connect rejects its statement and tries again for the next', async (t) => {
  const { config } = await createTestEnvironment(t)
  const url = new URL(config.databaseUrl)
  url.pathname = '/no_such_database_here'
  const connection = new DedicatedConnection(createPool(url.toString(), 1, pino({ level: 'silent' })))
  t.teardown(async () => { await connection.end() })
  await t.rejects(connection.run('test-one', 'select 1', []), { code: '3D000' }, 'the database does not exist')
  await t.rejects(connection.run('test-one', 'select 1', []), { code: '3D000' }, 'a second statement tries again, and fails as PostgreSQL says')
})

t.test('a DedicatedConnection ends once the statement in flight has settled', async (t) => {
  const { config } = await createTestEnvironment(t)
  const pool = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  const connection = new DedicatedConnection(pool)
  const slow = connection.run<{ done: boolean }>('test-slow', 'select pg_sleep(0.2) is not null as done', [])
  await connection.end()
  t.same((await slow).rows, [{ done: true }], 'the statement in flight finished')
  t.equal(pool.totalCount, 0, 'and the connection is closed')
  t.equal(pool.ending, true)
})
