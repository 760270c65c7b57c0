import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { buildTestApp, configWith } from '../support/app'
import { createTestEnvironment } from '../support/environment'
import { startTcpProxy } from '../support/tcp-proxy'
import { freePort } from '../support/free-port'
import { startSilentServer } from '../support/silent-server'
import { timeUntil } from '../support/wait'

/** Readiness must report an outage within this long (the checks time out after 1 s). */
const FAIL_FAST_MS = 2000

async function ready (app: FastifyInstance): Promise<{ status: number, body: Record<string, unknown>, retryAfter: unknown, ms: number }> {
  const started = Date.now()
  const res = await app.inject({ method: 'GET', url: '/health/ready' })
  return { status: res.statusCode, body: res.json(), retryAfter: res.headers['retry-after'], ms: Date.now() - started }
}

const unavailable = (dependency: RegExp) => ({
  statusCode: 503,
  error: 'Service Unavailable',
  code: 'SERVICE_UNAVAILABLE',
  message: dependency,
})

t.test('health routes', async (t) => {
  const environment = await createTestEnvironment(t)

  t.test('live and ready answer 200 when PostgreSQL and Redis are up', async (t) => {
    const app = await buildTestApp(t, environment.config)
    const live = await app.inject({ method: 'GET', url: '/health/live' })
    t.equal(live.statusCode, 200)
    t.same(live.json(), { status: 'ok' })
    t.match(live.headers['content-type'], /^application\/json; charset=utf-8/)
    const answer = await ready(app)
    t.equal(answer.status, 200)
    t.same(answer.body, { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
    t.equal((await app.inject({ method: 'POST', url: '/health/ready' })).statusCode, 404, 'only GET')
  })

  t.test('ready is a fast 503 with Retry-After when PostgreSQL refuses connections; live stays 200', async (t) => {
    const url = new URL(environment.databaseUrl)
    url.port = String(await freePort())
    const app = await buildTestApp(t, configWith(environment, { DATABASE_URL: url.toString() }))
    const answer = await ready(app)
    t.equal(answer.status, 503)
    t.match(answer.body, unavailable(/^PostgreSQL is unavailable/))
    t.same(Object.keys(answer.body).sort(), ['code', 'error', 'message', 'statusCode'], 'the standard error body, nothing more')
    t.equal(answer.retryAfter, '1')
    t.ok(answer.ms < FAIL_FAST_MS, `answered in ${answer.ms} ms`)
    t.equal((await app.inject({ method: 'GET', url: '/health/live' })).statusCode, 200)
  })

  t.test('ready gives up on a PostgreSQL that accepts but never answers', async (t) => {
    const url = new URL(environment.databaseUrl)
    url.port = String(await startSilentServer(t))
    const app = await buildTestApp(t, configWith(environment, { DATABASE_URL: url.toString() }))
    for (let i = 0; i < 2; i++) {
      const answer = await ready(app)
      t.equal(answer.status, 503)
      t.match(answer.body, unavailable(/^PostgreSQL is unavailable/))
      t.ok(answer.ms < FAIL_FAST_MS, `probe ${i + 1} answered in ${answer.ms} ms`)
    }
  })

  t.test('ready fails fast while Redis or PostgreSQL is cut off, and recovers by itself', async (t) => {
    const redisUrl = new URL(environment.redisUrl)
    const databaseUrl = new URL(environment.databaseUrl)
    const redisProxy = await startTcpProxy(t, { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) })
    const pgProxy = await startTcpProxy(t, { host: databaseUrl.hostname, port: Number(databaseUrl.port || 5432) })
    redisUrl.port = String(redisProxy.port)
    databaseUrl.port = String(pgProxy.port)
    const app = await buildTestApp(t, configWith(environment, { REDIS_URL: redisUrl.toString(), DATABASE_URL: databaseUrl.toString() }))
    t.equal((await ready(app)).status, 200, 'ready through the proxies')

    await redisProxy.cut()
    let answer = await ready(app)
    t.equal(answer.status, 503, 'Redis cut: 503')
    t.match(answer.body, unavailable(/^Redis is unavailable/))
    t.equal(answer.retryAfter, '1')
    t.ok(answer.ms < FAIL_FAST_MS, `answered in ${answer.ms} ms`)
    await redisProxy.restore()
    const redisBack = await timeUntil(async () => (await ready(app)).status === 200, 10_000)
    t.ok(redisBack >= 0, `ready again ${redisBack} ms after Redis came back`)

    await pgProxy.cut()
    answer = await ready(app)
    t.equal(answer.status, 503, 'PostgreSQL cut: 503')
    t.match(answer.body, unavailable(/^PostgreSQL is unavailable/))
    t.ok(answer.ms < FAIL_FAST_MS, `answered in ${answer.ms} ms`)
    await redisProxy.cut()
    t.match((await ready(app)).body, unavailable(/^PostgreSQL \(and Redis\) is unavailable/), 'both down: both named')
    await redisProxy.restore()
    await pgProxy.restore()
    const pgBack = await timeUntil(async () => (await ready(app)).status === 200, 10_000)
    t.ok(pgBack >= 0, `ready again ${pgBack} ms after PostgreSQL came back`)
  })
})
