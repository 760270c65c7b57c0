/**
 * The options an API knows (api/purchasing/known-options.ts): a burst on an
 * option this process has not seen reads its limits once, an option created
 * here is known at once, and neither a missing option nor a failed read is
 * remembered.
 */
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { KnownOptions } from '../../api/purchasing/known-options'
import { createTicketOption, type TicketOptionLimits } from '../../shared/ticket-options'
import { buy, createOption, setUp } from '../support/app'

const LIMITS: TicketOptionLimits = { maxPerPurchase: 4, maxPerUser: null }

t.test('concurrent lookups of one option share one read; a known option is not read again', async (t) => {
  const known = new KnownOptions()
  let reads = 0
  const read = async (): Promise<TicketOptionLimits | null> => {
    reads++
    await new Promise((resolve) => setTimeout(resolve, 20))
    return LIMITS
  }
  const answers = await Promise.all(Array.from({ length: 50 }, async () => await known.lookup('a', read)))
  t.equal(reads, 1, 'fifty lookups at once, one read')
  t.ok(answers.every((a) => a === LIMITS))
  t.equal(await known.lookup('a', read), LIMITS)
  t.equal(reads, 1, 'then from memory')
  await known.lookup('b', read)
  t.equal(reads, 2, 'another option: its own read')
  t.equal(known.known('a'), LIMITS, 'known without a read or an await')
  t.equal(known.known('c'), undefined, 'an option not read yet is not known')
})

t.test('a missing option and a failed read are not remembered', async (t) => {
  const known = new KnownOptions()
  let reads = 0
  const missing = async (): Promise<TicketOptionLimits | null> => { reads++; return null }
  t.same(await Promise.all([known.lookup('a', missing), known.lookup('a', missing)]), [null, null])
  t.equal(reads, 1)
  t.equal(await known.lookup('a', missing), null)
  t.equal(reads, 2, 'asked again: it may have been created since')

  const failing = async (): Promise<TicketOptionLimits | null> => { reads++; throw new Error('PostgreSQL is down') }
  const failed = await Promise.allSettled([known.lookup('b', failing), known.lookup('b', failing)])
  t.same(failed.map((f) => f.status), ['rejected', 'rejected'], 'every request of the burst gets the error')
  t.equal(reads, 3, 'from one read')
  t.equal(await known.lookup('b', async () => LIMITS), LIMITS, 'the next lookup reads again')
})

t.test('the API reads an option\'s limits once per process: none for one it created, one for a burst on one created elsewhere', async (t) => {
  const { app, sql } = await setUp(t, { worker: true })
  const limitReads = countLimitReads(app)

  const mine = await createOption(app, 100)
  const burst = await Promise.all(Array.from({ length: 20 }, async () => await buy(app, mine)))
  t.same(burst.map((r) => r.statusCode), Array(20).fill(201))
  t.equal(limitReads(), 0, 'created here: known without asking')

  const elsewhere = (await createTicketOption(sql, { name: 'another API\'s', desc: '', allocation: 100, maxPerPurchase: 2, maxPerUser: null })).id
  const second = await Promise.all(Array.from({ length: 20 }, async () => await buy(app, elsewhere)))
  t.same(second.map((r) => r.statusCode), Array(20).fill(201))
  t.equal(limitReads(), 1, 'twenty purchases at once, one read')
  const over = await buy(app, elsewhere, { quantity: 3 })
  t.equal(over.statusCode, 422, 'the limits read are the ones enforced')
  t.equal(limitReads(), 1)
})

/** Counts the statements of the limits read (shared/ticket-options.ts) on the app's real pool. */
function countLimitReads (app: FastifyInstance): () => number {
  let n = 0
  const query = app.db.query.bind(app.db) as (...args: unknown[]) => unknown
  ;(app.db as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    if (typeof args[0] === 'string' && args[0].startsWith('select max_per_purchase, max_per_user from ticket_options')) n++
    return query(...args)
  }
  return () => n
}
