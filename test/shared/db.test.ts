/**
 * shared/db.ts runNamed: a named statement through the pool, as pg's own
 * Query (no config copy), prepared once per connection, its errors passed on.
 */
import t from 'tap'
import pino from 'pino'
import { createPool, runNamed } from '../../shared/db'
import { createTestEnvironment } from '../support/environment'

t.test('runNamed prepares a statement once per connection and answers each run with its rows', async (t) => {
  const { config } = await createTestEnvironment(t)
  const pool = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  t.teardown(async () => { await pool.end() })
  const text = 'select $1::integer + $2::integer as sum, $3::text as label'
  const first = await runNamed<{ sum: number, label: string }>(pool, 'test-sum', text, [1, 2, 'a'])
  const second = await runNamed<{ sum: number, label: string }>(pool, 'test-sum', text, [40, 2, null])
  t.same(first.rows, [{ sum: 3, label: 'a' }])
  t.same(second.rows, [{ sum: 42, label: null }])
  const prepared = await runNamed<{ name: string }>(pool, 'test-prepared', 'select name from pg_prepared_statements order by name', [])
  t.same(prepared.rows.map((r) => r.name), ['test-prepared', 'test-sum'], 'each statement prepared once on the pool\'s one connection')
})

t.test('runNamed rejects with PostgreSQL\'s error and leaves the pool usable', async (t) => {
  const { config } = await createTestEnvironment(t)
  const pool = createPool(config.databaseUrl, 1, pino({ level: 'silent' }))
  t.teardown(async () => { await pool.end() })
  await t.rejects(runNamed(pool, 'test-divide', 'select 1 / $1::integer as q', [0]), { code: '22012' }, 'division by zero, as PostgreSQL said it')
  t.same((await runNamed<{ q: number }>(pool, 'test-divide', 'select 1 / $1::integer as q', [1])).rows, [{ q: 1 }], 'the same statement runs again on the same connection')
  t.equal(pool.totalCount, 1)
  t.equal(pool.idleCount, 1, 'the client went back to the pool after the error')
})
