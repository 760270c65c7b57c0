/**
 * Idempotency-Key on POST /ticket_options/:id/purchases (API.md), backed by the
 * unique key of `idempotency_keys` (migrations/0002_idempotency_keys.sql).
 */
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { purchaseRequestHash } from '../../shared/idempotency-keys'
import { buy, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { eachQueueBackend, QUEUED } from '../support/environment'
import { unbalancedOptions } from '../support/environment'

async function allocation (app: FastifyInstance, optionId: string): Promise<number> {
  return (await app.inject({ method: 'GET', url: `/ticket_options/${optionId}` })).json().allocation
}

eachQueueBackend(t, 'idempotency keys with a worker', async (t, backendEnv) => {
  const { app, sql } = await setUp(t, { env: backendEnv })
  // Each subtest makes its own options and keys, and ends with the books of every option balanced.
  const subtest = (name: string, body: (t: Test) => Promise<void>) => t.test(name, async (t) => {
    await body(t)
    t.same(await unbalancedOptions(sql), [], 'the books balance')
  })

  void subtest('50 concurrent requests with one key buy once and get 50 identical answers', async (t) => {
    const id = await createOption(app, 1000)
    const answers = await Promise.all(Array.from({ length: 50 }, async () => await buy(app, id, { quantity: 3, key: 'order-4711' })))
    const first = answers[0]
    t.equal(first?.statusCode, 201)
    for (const answer of answers) {
      t.equal(answer.statusCode, first?.statusCode)
      t.equal(answer.body, first?.body)
      t.equal(answer.headers.location, first?.headers.location)
    }
    const { rows } = await sql.query('select id from purchases where ticket_option_id = $1', [id])
    t.equal(rows.length, 1, 'one purchase')
    t.equal(rows[0].id, first?.json().id)
    t.equal(await allocation(app, id), 997)
    const keys = await sql.query('select purchase_id from idempotency_keys where ticket_option_id = $1', [id])
    t.same(keys.rows, [{ purchase_id: first?.json().id }])
  })

  void subtest('a retry after completion answers the recorded 201 or 409 again, and buys nothing more', async (t) => {
    const id = await createOption(app, 2)
    const bought = await buy(app, id, { quantity: 2, key: 'first' })
    t.equal(bought.statusCode, 201)
    const refused = await buy(app, id, { quantity: 1, key: 'second' })
    t.equal(refused.statusCode, 409)
    const boughtAgain = await buy(app, id, { quantity: 2, key: 'first' })
    t.equal(boughtAgain.statusCode, 201)
    t.equal(boughtAgain.body, bought.body)
    const refusedAgain = await buy(app, id, { quantity: 1, key: 'second' })
    t.equal(refusedAgain.statusCode, 409)
    t.equal(refusedAgain.body, refused.body)
    t.equal(await allocation(app, id), 0)
    const { rows } = await sql.query('select count(*)::int as n from purchases where ticket_option_id = $1', [id])
    t.equal(rows[0].n, 2)
  })

  void subtest('the same key with another quantity is a 422 and buys nothing', async (t) => {
    const id = await createOption(app, 10)
    t.equal((await buy(app, id, { quantity: 1, key: 'k' })).statusCode, 201)
    const reused = await buy(app, id, { quantity: 2, key: 'k' })
    t.equal(reused.statusCode, 422)
    t.same(reused.json(), {
      statusCode: 422,
      error: 'Unprocessable Entity',
      message: 'This Idempotency-Key was already used with a different request body',
      code: 'IDEMPOTENCY_KEY_REUSED',
    })
    t.equal(await allocation(app, id), 9)
  })

  void subtest('a key belongs to one option and one user', async (t) => {
    const id = await createOption(app, 10)
    const other = await createOption(app, 10)
    const mine = await buy(app, id, { quantity: 1, key: 'shared-key' })
    const otherUser = await buy(app, id, { quantity: 1, key: 'shared-key', userId: randomUUID() })
    const otherOption = await buy(app, other, { quantity: 1, key: 'shared-key' })
    t.equal(mine.statusCode, 201)
    t.equal(otherUser.statusCode, 201)
    t.equal(otherOption.statusCode, 201)
    t.not(mine.json().id, otherUser.json().id)
    t.not(mine.json().id, otherOption.json().id)
    t.equal(await allocation(app, id), 8)
  })

  void subtest('an expired key counts as new, whatever the body', async (t) => {
    const id = await createOption(app, 10)
    const first = await buy(app, id, { quantity: 1, key: 'expiring' })
    t.equal(first.statusCode, 201)
    await sql.query("update idempotency_keys set expires_at = now() - interval '1 second' where ticket_option_id = $1", [id])
    const second = await buy(app, id, { quantity: 2, key: 'expiring' })
    t.equal(second.statusCode, 201, 'not a 422: the old key is gone')
    t.not(second.json().id, first.json().id)
    t.equal(await allocation(app, id), 7)
    const { rows } = await sql.query('select purchase_id, expires_at > now() + interval \'23 hours\' as fresh from idempotency_keys where ticket_option_id = $1', [id])
    t.same(rows, [{ purchase_id: second.json().id, fresh: true }], 'overwritten in place with a new expiry')
    t.equal((await buy(app, id, { quantity: 2, key: 'expiring' })).body, second.body, 'and remembered again')
  })

  void subtest('a key whose purchase was never queued (an API died after claiming it) gets its job added again', async (t) => {
    const id = await createOption(app, 10)
    const purchaseId = randomUUID()
    await sql.query(
      `insert into idempotency_keys (ticket_option_id, user_id, key, request_hash, purchase_id, expires_at)
       values ($1, $2, 'orphan', $3, $4, now() + interval '1 hour')`,
      [id, USER, purchaseRequestHash(4), purchaseId]
    )
    const res = await buy(app, id, { quantity: 4, key: 'orphan' })
    t.equal(res.statusCode, 201)
    t.equal(res.json().id, purchaseId, 'the purchase the key names')
    t.equal(await allocation(app, id), 6)
  })

  void subtest('a key whose purchase was voided (its enqueue failed) starts afresh', async (t) => {
    const id = await createOption(app, 10)
    const voided = randomUUID()
    await sql.query(
      `insert into purchases (id, ticket_option_id, user_id, quantity, status, reason)
       values ($1, $2, $3, 1, 'rejected', 'not_queued')`,
      [voided, id, USER]
    )
    await sql.query(
      `insert into idempotency_keys (ticket_option_id, user_id, key, request_hash, purchase_id, expires_at)
       values ($1, $2, 'voided', $3, $4, now() + interval '1 hour')`,
      [id, USER, purchaseRequestHash(1), voided]
    )
    const res = await buy(app, id, { quantity: 1, key: 'voided' })
    t.equal(res.statusCode, 201)
    t.not(res.json().id, voided)
    t.equal(await allocation(app, id), 9)
    const { rows } = await sql.query('select purchase_id from idempotency_keys where ticket_option_id = $1', [id])
    t.same(rows, [{ purchase_id: res.json().id }])
  })
})

eachQueueBackend(t, 'a keyed purchase answered 202 answers 202 with the same id until it is applied, then 201', async (t, backendEnv) => {
  const { app, config } = await setUp(t, { worker: false, env: { PURCHASE_WAIT_MS: '200', ...backendEnv, ...QUEUED } })
  const id = await createOption(app, 5)
  const first = await buy(app, id, { quantity: 2, key: 'slow' })
  t.equal(first.statusCode, 202)
  const again = await buy(app, id, { quantity: 2, key: 'slow' })
  t.equal(again.statusCode, 202)
  t.equal(again.body, first.body)
  t.equal(again.headers.location, first.headers.location)
  await startTestWorker(t, config)
  let done
  for (let i = 0; i < 100; i++) {
    done = await buy(app, id, { quantity: 2, key: 'slow' })
    if (done.statusCode !== 202) break
  }
  t.equal(done?.statusCode, 201)
  t.equal(done?.json().id, first.json().id)
  t.equal(await allocation(app, id), 3)
})
