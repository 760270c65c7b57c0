/**
 * Logs as operators see them: one purchase can be followed by its request id
 * from the API's request line to the worker's lines for its job, and request
 * logs never carry credentials. The API and the worker log through the real
 * pino options (shared/logger.ts) into streams this test reads.
 */
import { randomUUID } from 'node:crypto'
import { Queue } from 'bullmq'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import t from 'tap'
import { buildApp } from '../../api/app'
import type { Config } from '../../shared/config'
import { loggerOptions } from '../../shared/logger'
import type { PurchaseRequest } from '../../shared/purchases/sale-request'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import { touchOption } from '../../shared/queues/queue-registry'
import { startWorker } from '../../worker/main'
import { createOption } from '../support/app'
import { createTestEnvironment, QUEUED, type Teardown } from '../support/environment'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

type Line = Record<string, unknown>

class CapturedLog {
  readonly lines: Line[] = []
  readonly raw: string[] = []
  write (text: string): void {
    this.raw.push(text)
    this.lines.push(JSON.parse(text) as Line)
  }

  /** The first line matching `fields`, waiting for it up to `timeoutMs` (a worker logs after the API has answered). */
  async find (fields: Line, timeoutMs = 5000): Promise<Line | undefined> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const line = this.lines.find((l) => Object.entries(fields).every(([k, v]) => l[k] === v))
      if (line !== undefined || Date.now() > deadline) return line
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  }
}

async function appLoggingTo (t: Teardown, config: Config, log: CapturedLog, level: string): Promise<FastifyInstance> {
  const app = await buildApp(config, { logger: { ...loggerOptions(config, 'api'), level, stream: log } })
  t.teardown(async () => { await app.close() })
  await app.ready()
  return app
}

t.test('a purchase can be followed by its request id from the API into the worker', async (t) => {
  const environment = await createTestEnvironment(t, QUEUED)
  const { config } = environment
  const apiLog = new CapturedLog()
  const workerLog = new CapturedLog()
  const app = await appLoggingTo(t, config, apiLog, 'info')
  // Debug: the worker's per-purchase line is debug-only (too many at info in a sale).
  const worker = await startWorker(config, pino({ ...loggerOptions(config, 'worker'), level: 'debug' }, workerLog))
  t.teardown(async () => { await worker.close() })
  const optionId = await createOption(app, 1)

  t.test('a caller\'s X-Request-Id', async (t) => {
    const reqId = `trace-${randomUUID()}`
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/purchases`, headers: { 'x-request-id': reqId }, payload: { quantity: 1, user_id: USER } })
    t.equal(res.statusCode, 201)
    t.equal(res.headers['x-request-id'], reqId)
    t.ok(await apiLog.find({ reqId, msg: 'incoming request' }), 'the API logged the request with it')
    t.match(await apiLog.find({ reqId, msg: 'request completed' }), { res: { statusCode: 201 } })
    t.match(await workerLog.find({ reqId, msg: 'purchase applied' }), {
      name: 'worker', purchaseId: res.json().id, ticketOptionId: optionId, status: 'succeeded',
    }, 'the worker logged the job with it')
  })

  t.test('an id the API made up', async (t) => {
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/purchases`, payload: { quantity: 1, user_id: USER } })
    t.equal(res.statusCode, 409)
    const reqId = String(res.headers['x-request-id'])
    t.match(reqId, /^[0-9a-f-]{36}$/)
    t.ok(await apiLog.find({ reqId, msg: 'incoming request' }))
    t.match(await workerLog.find({ reqId, msg: 'purchase applied' }), { purchaseId: res.json().purchase_id, status: 'rejected' })
  })

  t.test('a job that fails is logged at error with its request id', async (t) => {
    // A job for an option that does not exist (an API never adds one) fails for good.
    const ghost = randomUUID()
    const data: PurchaseRequest = { purchaseId: randomUUID(), ticketOptionId: ghost, userId: USER, quantity: 1, requestId: `ghost-${randomUUID()}`, enqueuedAt: Date.now() }
    const queue = new Queue(purchaseQueueName(ghost), { connection: environment.redis, prefix: environment.prefix })
    t.teardown(async () => { await queue.close() })
    await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
    await touchOption(environment.redis, environment.prefix, ghost)
    t.match(await workerLog.find({ reqId: data.requestId, msg: 'purchase job failed' }, 10_000), {
      level: 50, jobId: data.purchaseId, ticketOptionId: ghost, err: { message: /does not exist/ },
    })
  })
})

t.test('a purchase the API applied itself (the direct path) is logged with its request id at debug', async (t) => {
  const { config } = await createTestEnvironment(t)
  const apiLog = new CapturedLog()
  const app = await appLoggingTo(t, config, apiLog, 'debug')
  const optionId = await createOption(app, 1)
  const reqId = `direct-${randomUUID()}`
  const res = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/purchases`, headers: { 'x-request-id': reqId }, payload: { quantity: 1, user_id: USER } })
  t.equal(res.statusCode, 201, 'applied without a worker')
  t.match(await apiLog.find({ reqId, msg: 'purchase applied directly' }), { name: 'api', purchaseId: res.json().id, ticketOptionId: optionId, status: 'succeeded', line: 1 })
})

t.test('request logs never carry credentials', async (t) => {
  const password = 'dashboard-secret-pw-9f3'
  const bearer = 'bearer-token-4c1e77'
  const cookie = 'session-cookie-0d2b'
  const environment = await createTestEnvironment(t, { DASHBOARD_USER: 'operator', DASHBOARD_PASSWORD: password })
  const apiLog = new CapturedLog()
  // Trace: the most the API ever logs.
  const app = await appLoggingTo(t, environment.config, apiLog, 'trace')
  const basic = `Basic ${Buffer.from(`operator:${password}`).toString('base64')}`
  const wrong = `Basic ${Buffer.from(`operator:${password}-wrong`).toString('base64')}`

  t.equal((await app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: { authorization: basic } })).statusCode, 200)
  t.equal((await app.inject({ method: 'GET', url: '/admin/queues', headers: { authorization: wrong } })).statusCode, 401)
  t.equal((await app.inject({ method: 'PUT', url: '/admin/queues/api/queues/x/retry/failed', headers: { authorization: basic } })).statusCode, 403)
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${randomUUID()}`, headers: { authorization: `Bearer ${bearer}`, cookie: `sid=${cookie}` } })).statusCode, 404)
  // Code that logs headers is redacted too.
  app.log.warn({ headers: { authorization: `Bearer ${bearer}` }, req: { headers: { authorization: basic, cookie } } }, 'headers logged on purpose')

  t.ok(await apiLog.find({ msg: 'refused a change through the read-only dashboard' }), 'the refused change was logged')
  t.match(await apiLog.find({ msg: 'headers logged on purpose' }), { headers: { authorization: '***' } })
  t.ok(apiLog.lines.filter((l) => l.msg === 'incoming request').length >= 4, 'every request was logged')
  const everything = apiLog.raw.join('')
  for (const secret of [password, Buffer.from(`operator:${password}`).toString('base64'), bearer, cookie]) {
    t.notOk(everything.includes(secret), `${secret.slice(0, 12)}… is in no log line`)
  }
})
