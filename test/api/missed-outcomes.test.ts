/**
 * Outcomes published while the API did not listen (api/purchasing/outcome-waiter.ts):
 * once listening again, each waiting purchase or hold looks its outcome up in
 * PostgreSQL instead of sitting out its whole wait. On both queue backends, the
 * API's outcome connection is cut again and again until the worker has
 * recorded the purchase, so its message is published to nobody.
 */
import pino from 'pino'
import t from 'tap'
import { OutcomeWaiter } from '../../api/purchasing/outcome-waiter'
import type { SaleOutcome } from '../../shared/purchases/sale-store'
import { buy, createOption, setUp } from '../support/app'
import { unbalancedOptions, type TestEnvironment } from '../support/environment'
import { sleep } from '../support/wait'

const WAIT_MS = 8000

/** Closes the API's outcome connection (it comes back by itself within a few hundred ms); how many were closed. */
async function cutOutcomeConnection (backend: 'redis' | 'postgres', { prefix, sql, redis }: Pick<TestEnvironment, 'prefix' | 'sql' | 'redis'>): Promise<number> {
  if (backend === 'postgres') {
    return (await sql.query('select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1', [`${prefix}-api-listener`])).rowCount ?? 0
  }
  const clients = (await redis.client('LIST') as string).split('\n')
  const ids = clients.filter((c) => c.includes(` name=${prefix}-api-subscriber `)).flatMap((c) => /^id=(\d+)/.exec(c)?.[1] ?? [])
  for (const id of ids) await redis.client('KILL', 'ID', id)
  return ids.length
}

for (const backend of ['redis', 'postgres'] as const) {
  t.test(`${backend}: a purchase whose outcome was published while the API did not listen is answered once it listens again`, async (t) => {
    const environment = await setUp(t, { env: { QUEUE_BACKEND: backend, PURCHASE_WAIT_MS: String(WAIT_MS), DIRECT_PURCHASES: 'false' } })
    const { app, sql } = environment
    const id = await createOption(app, 10)
    t.equal((await buy(app, id)).statusCode, 201, 'sells while listening')
    const cut = async (): Promise<number> => await cutOutcomeConnection(backend, environment)
    t.equal(await cut(), 1, "the API's outcome connection was cut")

    const answer = buy(app, id)
    const recorded = async (): Promise<number> => Number((await sql.query('select count(*) from purchases where ticket_option_id = $1', [id])).rows[0].count)
    // Kept cut until the worker has recorded it: its message went to nobody.
    const deadline = Date.now() + WAIT_MS / 2
    while (await recorded() < 2 && Date.now() < deadline) {
      await cut()
      await sleep(20)
    }
    t.equal(await recorded(), 2, 'recorded while the API did not listen')
    const after = await answer
    t.equal(after.statusCode, 201)
    t.ok(after.tookMs < WAIT_MS / 2, `answered in ${after.tookMs} ms, once listening again, not at the end of its ${WAIT_MS} ms wait`)
    t.same(await unbalancedOptions(sql), [])
  })
}

/** A stand-in for the backend's subscription: the test says when a gap ends. */
function gapControl (): { backend: ConstructorParameters<typeof OutcomeWaiter>[0], gapEnded: () => void } {
  let onGap: () => void = () => {}
  return {
    backend: { subscribeLineMessages: async (_onMessage, gap) => { onGap = gap } },
    gapEnded: () => { onGap() },
  }
}

const outcome = (id: string): SaleOutcome => ({ id, ticket_option_id: id, user_id: id, quantity: 1, status: 'succeeded', created_at: new Date(0).toISOString() }) as SaleOutcome

t.test('after a gap, lookups run a few at a time; one that fails or finds nothing leaves its wait waiting', async (t) => {
  const { backend, gapEnded } = gapControl()
  const warnings: unknown[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(JSON.parse(line)) } })
  const waiter = new OutcomeWaiter(backend, undefined, log)
  await waiter.start()
  let running = 0
  let mostAtOnce = 0
  const lookup = (result: () => SaleOutcome | null) => async () => {
    running++
    mostAtOnce = Math.max(mostAtOnce, running)
    await sleep(5)
    running--
    return result()
  }
  const found = Array.from({ length: 10 }, (_, i) => waiter.wait(`found-${i}`, 5000, lookup(() => outcome(`found-${i}`))))
  const notYet = waiter.wait('not-yet', 300, lookup(() => null))
  const failing = waiter.wait('failing', 300, lookup(() => { throw new Error('PostgreSQL is away') }))
  const without = waiter.wait('without', 300)
  gapEnded()
  t.same((await Promise.all(found.map(async (w) => await w.promise))).map((o) => o?.id), found.map((_, i) => `found-${i}`), 'each found outcome answers its wait')
  t.ok(mostAtOnce <= 4, `${mostAtOnce} lookups at once`)
  t.equal(await notYet.promise, null, 'not recorded yet: waits out its time')
  t.equal(await failing.promise, null, 'a failed lookup: waits out its time')
  t.equal(await without.promise, null, 'a wait without a lookup is left alone')
  t.match(warnings, [{ msg: 'could not look up an outcome after a reconnect', err: { message: 'PostgreSQL is away' } }])
  t.equal(waiter.waiting, 0, 'nothing left behind')
})
