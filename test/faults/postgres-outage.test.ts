/**
 * Fault: PostgreSQL becomes unreachable to the worker for a few seconds in the
 * middle of a burst (issue 4). The worker reaches PostgreSQL through a TCP
 * proxy that the test cuts (open connections reset, new ones refused) and
 * restores, the way a crashed or restarting database looks from the worker.
 * The worker retries in place (WORKER_DB_RETRY_MS), so the purchases queued
 * during the outage are applied when it ends, each exactly once and with its
 * true outcome: an outage never turns a purchase into a rejection.
 */
import t from 'tap'
import { createTestEnvironment, QUEUED } from '../support/environment'
import { checkBooks, createOptionOver, fireBurst, settlePending } from '../support/purchase-burst'
import { startProcess } from '../support/processes'
import { startTcpProxy } from '../support/tcp-proxy'

const OUTAGE_MS = 3000

t.test('PostgreSQL unreachable to the worker for 3 s mid-burst: every purchase applied once, with its true outcome', async (t) => {
  const environment = await createTestEnvironment(t, { PURCHASE_WAIT_MS: '15000', ...QUEUED })
  const { sql, env, databaseUrl } = environment
  const target = new URL(databaseUrl)
  const proxy = await startTcpProxy(t, { host: target.hostname, port: Number(target.port === '' ? 5432 : target.port) })
  const workerDatabaseUrl = new URL(databaseUrl)
  workerDatabaseUrl.port = String(proxy.port)
  const api = await startProcess(t, 'api', env)
  const worker = await startProcess(t, 'worker', { ...env, DATABASE_URL: workerDatabaseUrl.toString() })
  const initial = 200
  const optionId = await createOptionOver(api.url, initial)

  let outageAppliedBefore = 0
  const answers = await fireBurst(api.url, optionId, {
    count: 300,
    concurrency: 10,
    pauseMs: 20,
    strike: {
      after: 60,
      fault: async () => {
        await proxy.cut()
        outageAppliedBefore = Number((await sql.query('select count(*) as n from purchases')).rows[0].n)
        await new Promise((resolve) => setTimeout(resolve, OUTAGE_MS))
        await proxy.restore()
      },
    },
  })
  t.equal(answers.length, 300, 'every request was answered')
  t.same(answers.filter((a) => ![201, 202, 409].includes(a.status)).map((a) => [a.status, a.body]), [], 'only 201, 409 or 202: the API did not lose PostgreSQL')
  await settlePending(api.url, optionId, answers, 30_000)
  t.same(answers.filter((a) => a.settled === 'pending' || a.settled === 'not_found').map((a) => [a.purchaseId, a.settled]), [], 'every 202 settled through the status route')

  const retried = worker.output.filter((line) => line.includes('PostgreSQL unavailable, retrying purchase')).length
  t.ok(retried > 0, 'the outage hit the worker in the middle of applying purchases')
  t.same(worker.output.filter((line) => line.includes('purchase job failed')), [], 'no purchase job failed: the worker retried in place')
  t.comment(`applied before the cut: ${outageAppliedBefore}; worker retry warnings: ${retried}; connections through the proxy: ${proxy.accepted}`)

  const books = await checkBooks(t, sql, api.url, optionId, initial, answers, { everyRowAnswered: true })
  t.equal(books.purchases, 300, 'every purchase applied exactly once')
  t.equal(books.soldQuantity, initial, 'sold out exactly: no purchase was rejected because of the outage')
  t.equal(books.rejected, 300 - initial, 'the only rejections are the purchases beyond the allocation')
})
