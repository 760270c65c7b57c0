import t from 'tap'
import pino from 'pino'
import { createOption, setUp } from '../support/app'
import { startKeySweeper } from '../../worker/idempotency-key-sweeper'
import { createPool } from '../../shared/db'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

t.test('expired idempotency keys are deleted, live ones kept', async (t) => {
  const { app, sql, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '100' } })
  const id = await createOption(app, 10)
  for (const key of ['old-1', 'old-2', 'fresh']) {
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, headers: { 'idempotency-key': key }, payload: { quantity: 1, user_id: USER } })
    t.equal(res.statusCode, 202)
  }
  await sql.query("update idempotency_keys set expires_at = now() - interval '1 minute' where key like 'old-%'")
  const db = createPool(config.databaseUrl, 2, pino({ level: 'silent' }))
  t.teardown(async () => { await db.end() })

  const sweeper = startKeySweeper(db, pino({ level: 'silent' }), 60_000)
  t.teardown(sweeper.stop)
  t.equal(await sweeper.sweep(), 2)
  const { rows } = await sql.query('select key from idempotency_keys order by key')
  t.same(rows, [{ key: 'fresh' }])
  t.equal(await sweeper.sweep(), 0, 'nothing left to delete')
})

t.test('the timer sweeps by itself and a failure is only logged', async (t) => {
  const { app, sql, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '100' } })
  const id = await createOption(app, 10)
  await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, headers: { 'idempotency-key': 'old' }, payload: { quantity: 1, user_id: USER } })
  await sql.query("update idempotency_keys set expires_at = now() - interval '1 minute'")
  const db = createPool(config.databaseUrl, 2, pino({ level: 'silent' }))
  const sweeper = startKeySweeper(db, pino({ level: 'silent' }), 50)
  let left = 1
  for (let i = 0; i < 100 && left > 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    left = (await sql.query('select count(*)::int as n from idempotency_keys')).rows[0].n
  }
  t.equal(left, 0, 'swept by the timer')
  await db.end() // every later sweep fails: it must not throw out of the timer
  await new Promise((resolve) => setTimeout(resolve, 200))
  await sweeper.stop()
  t.pass('the process survived failing sweeps')
})
