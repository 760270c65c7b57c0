import net from 'node:net'
import t from 'tap'
import pino from 'pino'
import { Pool } from 'undici'
import { ConfigError, loadConfig } from '../../shared/config'
import { startWorker } from '../../worker/main'
import { configWith, startTestWorker } from '../support/app'
import { createTestEnvironment } from '../support/environment'
import { startTcpProxy } from '../support/tcp-proxy'
import { freePort } from '../support/free-port'
import { startProcess } from '../support/processes'
import { timeUntil } from '../support/wait'

const FAIL_FAST_MS = 2000

interface Answer { status: number, body: Record<string, unknown>, headers: Record<string, unknown>, ms: number }

async function get (port: number, path: string, method = 'GET'): Promise<Answer> {
  const pool = new Pool(`http://127.0.0.1:${port}`, { connections: 1 })
  const started = Date.now()
  try {
    const res = await pool.request({ method: method as 'GET', path })
    return { status: res.statusCode, body: JSON.parse(await res.body.text()) as Record<string, unknown>, headers: res.headers, ms: Date.now() - started }
  } finally {
    await pool.close()
  }
}

t.test('WORKER_HEALTH_PORT is validated and named when wrong', async (t) => {
  t.equal(loadConfig({}).workerHealthPort, 3001, 'default 3001')
  t.equal(loadConfig({ WORKER_HEALTH_PORT: '0' }).workerHealthPort, 0, '0 means any free port')
  for (const bad of ['abc', '-1', '70000', '3001.5']) {
    t.throws(() => loadConfig({ WORKER_HEALTH_PORT: bad }), { name: 'ConfigError', message: /WORKER_HEALTH_PORT/ }, JSON.stringify(bad))
  }
  t.ok(new ConfigError('x') instanceof Error)
})

t.test('worker health server', async (t) => {
  const environment = await createTestEnvironment(t)

  t.test('live and ready answer 200; anything else is a JSON 404; closed with the worker', async (t) => {
    const worker = await startWorker(environment.config, pino({ level: 'silent' }))
    let closed = false
    t.teardown(async () => { if (!closed) await worker.close() })
    t.ok(worker.healthPort > 0, `bound port ${worker.healthPort}`)
    const live = await get(worker.healthPort, '/health/live')
    t.equal(live.status, 200)
    t.same(live.body, { status: 'ok' })
    t.match(live.headers['content-type'], /^application\/json; charset=utf-8/)
    const ready = await get(worker.healthPort, '/health/ready')
    t.equal(ready.status, 200)
    t.same(ready.body, { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
    const unknown = await get(worker.healthPort, '/nope')
    t.equal(unknown.status, 404)
    t.same(unknown.body, { statusCode: 404, error: 'Not Found', message: 'Route GET /nope not found', code: 'ROUTE_NOT_FOUND' })
    t.equal((await get(worker.healthPort, '/health/ready', 'POST')).status, 404, 'only GET')

    await worker.close()
    closed = true
    await t.rejects(get(worker.healthPort, '/health/live'), { code: 'ECONNREFUSED' }, 'nothing listens after close')
  })

  t.test('a port already in use: the worker serves its probes on a free port and says so', async (t) => {
    const blocker = net.createServer()
    await new Promise<void>((resolve) => { blocker.listen(0, '127.0.0.1', resolve) })
    t.teardown(async () => { await new Promise((resolve) => { blocker.close(resolve) }) })
    const port = (blocker.address() as net.AddressInfo).port
    const lines: string[] = []
    const worker = await startWorker(configWith(environment, { WORKER_HEALTH_PORT: String(port) }), pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } }))
    t.teardown(worker.close)
    t.not(worker.healthPort, port, 'another port')
    t.equal((await get(worker.healthPort, '/health/ready')).status, 200, 'and it answers there')
    const warning = lines.map((line) => JSON.parse(line) as Record<string, unknown>).find((l) => /WORKER_HEALTH_PORT is taken/.test(String(l.msg)))
    t.match(warning, { wanted: port, port: worker.healthPort }, 'the log names the port it took')
  })

  t.test('an address it cannot bind stops the worker with a message naming WORKER_HEALTH_PORT', async (t) => {
    // 192.0.2.1 is TEST-NET-1: never an address of this machine.
    await t.rejects(startWorker(configWith(environment, { HOST: '192.0.2.1', WORKER_HEALTH_PORT: '3999' }), pino({ level: 'silent' })), { message: /192\.0\.2\.1:3999 \(WORKER_HEALTH_PORT\): EADDRNOTAVAIL/ })
  })

  t.test('ready is a fast 503 with Retry-After when PostgreSQL refuses connections; live stays 200', async (t) => {
    const url = new URL(environment.databaseUrl)
    url.port = String(await freePort())
    const worker = await startTestWorker(t, configWith(environment, { DATABASE_URL: url.toString() }))
    const ready = await get(worker.healthPort, '/health/ready')
    t.equal(ready.status, 503)
    t.same(ready.body, { statusCode: 503, error: 'Service Unavailable', message: 'PostgreSQL is unavailable, try again shortly', code: 'SERVICE_UNAVAILABLE' })
    t.equal(ready.headers['retry-after'], '1')
    t.ok(ready.ms < FAIL_FAST_MS, `answered in ${ready.ms} ms`)
    t.equal((await get(worker.healthPort, '/health/live')).status, 200)
  })

  t.test('ready fails fast while Redis is cut off, and recovers by itself', async (t) => {
    const redisUrl = new URL(environment.redisUrl)
    const proxy = await startTcpProxy(t, { host: redisUrl.hostname, port: Number(redisUrl.port || 6379) })
    redisUrl.port = String(proxy.port)
    const worker = await startTestWorker(t, configWith(environment, { REDIS_URL: redisUrl.toString() }))
    t.equal((await get(worker.healthPort, '/health/ready')).status, 200, 'ready through the proxy')
    await proxy.cut()
    const down = await get(worker.healthPort, '/health/ready')
    t.equal(down.status, 503)
    t.match(down.body, { statusCode: 503, code: 'SERVICE_UNAVAILABLE', message: /^Redis is unavailable/ })
    t.ok(down.ms < FAIL_FAST_MS, `answered in ${down.ms} ms`)
    t.equal((await get(worker.healthPort, '/health/live')).status, 200, 'still live')
    await proxy.restore()
    const back = await timeUntil(async () => (await get(worker.healthPort, '/health/ready')).status === 200, 10_000)
    t.ok(back >= 0, `ready again ${back} ms after Redis came back`)
  })
})

t.test('two workers started on one host with no port configured both run', async (t) => {
  const environment = await createTestEnvironment(t)
  // The default WORKER_HEALTH_PORT (3001) for both, as two `npm run start:worker` would have.
  const { WORKER_HEALTH_PORT: _unset, ...env } = environment.env
  const first = await startProcess(t, 'worker', env)
  const second = await startProcess(t, 'worker', env)
  const ports = [first, second].map((w) => {
    const line = w.output.find((l) => l.includes('worker health listening'))
    return line === undefined ? undefined : (JSON.parse(line) as { port: number }).port
  })
  t.equal(ports.filter((p) => typeof p === 'number').length, 2, `both serve probes (ports ${JSON.stringify(ports)})`)
  t.not(ports[0], ports[1], 'on ports of their own')
  for (const port of ports) t.equal((await get(port as number, '/health/live')).status, 200)
  t.equal(first.child.exitCode, null, 'the first still runs')
  t.equal(second.child.exitCode, null, 'the second still runs')
})
