import t from 'tap'
import pino from 'pino'
import { createOption, setUp } from '../support/app'
import { QUEUED } from '../support/environment'
import { startKeySweeper } from '../../worker/idempotency-key-sweeper'
import { createPool } from '../../shared/db'
import { waitFor } from '../support/wait'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

t.test('expired idempotency keys are deleted, live ones kept', async (t) => {
  const { app, sql, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '100', ...QUEUED } })
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
  const { app, sql, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '100', ...QUEUED } })
  const id = await createOption(app, 10)
  await app.inject({ method: 'POST', url: `/ticket_options/${id}/purchases`, headers: { 'idempotency-key': 'old' }, payload: { quantity: 1, user_id: USER } })
  await sql.query("update idempotency_keys set expires_at = now() - interval '1 minute'")
  const db = createPool(config.databaseUrl, 2, pino({ level: 'silent' }))
  const lines: Array<{ level: number, msg: string, err?: { message: string } }> = []
  const log = pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line)) } })
  const sweeper = startKeySweeper(db, log, 50)
  const left = await waitFor(async () => (await sql.query('select count(*)::int as n from idempotency_keys')).rows[0].n as number, (n) => n === 0, 5000)
  t.equal(left, 0, 'swept by the timer')
  t.match(lines.find((l) => l.msg === 'expired idempotency keys deleted'), { level: 30, deleted: 1 }, 'and said how many')
  await db.end() // every later sweep fails: it must not throw out of the timer
  const failures = await waitFor(() => lines.filter((l) => l.msg === 'could not delete expired idempotency keys'), (f) => f.length >= 2, 5000)
  await sweeper.stop()
  t.ok(failures.length >= 2, `the timer kept running and warned on each failed sweep (${failures.length})`)
  t.match(failures[0], { level: 40, err: { message: /pool/i } }, 'with the reason')
})
