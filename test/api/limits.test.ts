/**
 * Limits and abuse: BODY_LIMIT_BYTES, REQUEST_TIMEOUT_MS, BODY_TIMEOUT_MS,
 * RATE_LIMIT_PURCHASES_PER_MINUTE and TRUST_PROXY (shared/config.ts,
 * api/app.ts, api/plugins/body-deadline.ts, api/plugins/rate-limit.ts).
 */
import net from 'node:net'
import t from 'tap'
import { createOption, setUp } from '../support/app'
import { QUEUED } from '../support/environment'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

t.test('BODY_LIMIT_BYTES: a body over it is a 413, one under it is read', async (t) => {
  const { app } = await setUp(t, { worker: false, env: { BODY_LIMIT_BYTES: '1024' } })
  const over = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'a', desc: 'x'.repeat(1100), allocation: 1 } })
  t.equal(over.statusCode, 413)
  t.match(over.json(), { statusCode: 413, code: 'FST_ERR_CTP_BODY_TOO_LARGE' })
  const under = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'a', desc: 'x'.repeat(900), allocation: 1 } })
  t.equal(under.statusCode, 201)
})

t.test('REQUEST_TIMEOUT_MS: a request that does not arrive in time is a 408; a purchase waiting its full wait is not cut off', async (t) => {
  const { app } = await setUp(t, { worker: false, env: { REQUEST_TIMEOUT_MS: '1500', PURCHASE_WAIT_MS: '400', ...QUEUED } })
  const option = await createOption(app, 5)
  const { port } = new URL(await app.listen({ port: 0, host: '127.0.0.1' }))

  // A slow client trickles its headers, a byte every 200 ms: Node's requestTimeout answers 408.
  const slow = await slowClient(Number(port), 'GET /ticket_options/' + option + ' HTTP/1.1\r\nHost: x\r\nX-Slow: ', 'a')
  t.match(slow.answer, /^HTTP\/1.1 408 /)
  t.same(JSON.parse(slow.answer.split('\r\n\r\n')[1] ?? ''), { statusCode: 408, error: 'Request Timeout', message: 'The request did not arrive in time', code: 'REQUEST_TIMEOUT' })
  t.ok(slow.tookMs >= 1400 && slow.tookMs < 3500, `cut off after ${slow.tookMs} ms`)

  // A client that stops in the middle of its body: the idle socket is closed (connectionTimeout), nothing is answered.
  const stalled = await slowClient(Number(port), 'POST /ticket_options HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":', null)
  t.equal(stalled.answer, '')
  t.ok(stalled.tookMs >= 1400 && stalled.tookMs < 3500, `closed after ${stalled.tookMs} ms`)

  // No worker: the purchase waits PURCHASE_WAIT_MS and answers 202 over a real connection.
  const res = await fetch(`http://127.0.0.1:${port}/ticket_options/${option}/purchases`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ quantity: 1, user_id: USER }),
  })
  t.equal(res.status, 202)
})

t.test('BODY_TIMEOUT_MS: a body trickled a byte at a time is cut off with a 408 and its connection closed, on every route', async (t) => {
  const { app } = await setUp(t, { worker: false, env: { BODY_TIMEOUT_MS: '600' } })
  const option = await createOption(app, 5)
  const { port } = new URL(await app.listen({ port: 0, host: '127.0.0.1' }))
  for (const path of ['/ticket_options', `/ticket_options/${option}/purchases`, '/no/such/route']) {
    // Well under REQUEST_TIMEOUT_MS (15 s here): only the body deadline can cut it off this soon.
    const slow = await slowClient(Number(port), `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{`, ' ')
    t.match(slow.answer, /^HTTP\/1.1 408 /, path)
    t.match(slow.answer, /\r\nconnection: close\r\n/i, `${path}: the connection is closed`)
    t.same(JSON.parse(slow.answer.split('\r\n\r\n')[1] ?? ''), {
      statusCode: 408, error: 'Request Timeout', message: 'The request body did not arrive within 600 ms', code: 'BODY_TIMEOUT',
    })
    t.ok(slow.tookMs >= 550 && slow.tookMs < 3000, `${path}: cut off after ${slow.tookMs} ms`)
  }
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${option}` })).json().allocation, 5, 'nothing was bought')
  const quick = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'on time', allocation: 1 } })
  t.equal(quick.statusCode, 201, 'a body that arrives in time is read')
})

t.test('TRUST_PROXY: behind a trusted proxy the rate limit counts the clients it forwards, not the proxy', async (t) => {
  const forwardedFor = (client: string) => ({ 'x-forwarded-for': client })
  const buyVia = (app: Awaited<ReturnType<typeof setUp>>['app'], option: string, client: string) => app.inject({
    method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, remoteAddress: '10.1.1.1', headers: forwardedFor(client),
  })

  const trusted = await setUp(t, { env: { RATE_LIMIT_PURCHASES_PER_MINUTE: '2', TRUST_PROXY: '10.0.0.0/8' } })
  const option = await createOption(trusted.app, 100)
  const first = [await buyVia(trusted.app, option, '203.0.113.7'), await buyVia(trusted.app, option, '203.0.113.7'), await buyVia(trusted.app, option, '203.0.113.7')]
  t.same(first.map((r) => r.statusCode), [201, 201, 429], 'one client behind the proxy is limited')
  t.equal((await buyVia(trusted.app, option, '198.51.100.9')).statusCode, 201, 'another client behind the same proxy is not')

  const untrusted = await setUp(t, { env: { RATE_LIMIT_PURCHASES_PER_MINUTE: '2' } })
  const other = await createOption(untrusted.app, 100)
  const answers = [await buyVia(untrusted.app, other, '203.0.113.7'), await buyVia(untrusted.app, other, '198.51.100.9'), await buyVia(untrusted.app, other, '192.0.2.5')]
  t.same(answers.map((r) => r.statusCode), [201, 201, 429], 'without TRUST_PROXY every client behind the proxy shares its limit')
})

t.test('RATE_LIMIT_PURCHASES_PER_MINUTE: 429 with Retry-After past the limit, per client, purchases only', async (t) => {
  const { app } = await setUp(t, { env: { RATE_LIMIT_PURCHASES_PER_MINUTE: '3' } })
  const option = await createOption(app, 100)
  const buy = async (remoteAddress = '10.0.0.1') => await app.inject({
    method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, remoteAddress,
  })
  for (let i = 0; i < 3; i++) t.equal((await buy()).statusCode, 201)
  const limited = await buy()
  t.equal(limited.statusCode, 429)
  t.match(limited.json(), { statusCode: 429, error: 'Too Many Requests', code: 'RATE_LIMITED', message: 'Too many purchase requests, retry in 1 minute' })
  t.same(Object.keys(limited.json()).sort(), ['code', 'error', 'message', 'statusCode'])
  t.match(limited.headers['retry-after'], /^\d+$/)
  t.ok(Number(limited.headers['retry-after']) > 0 && Number(limited.headers['retry-after']) <= 60)
  t.equal((await buy('10.0.0.2')).statusCode, 201, 'another client is not limited')
  const reads = await Promise.all(Array.from({ length: 10 }, async () => await app.inject({ method: 'GET', url: `/ticket_options/${option}`, remoteAddress: '10.0.0.1' })))
  t.same(reads.map((r) => r.statusCode), Array(10).fill(200), 'other routes are not limited')
  t.equal((await app.inject({ method: 'GET', url: `/ticket_options/${option}` })).json().allocation, 96, 'the 429 bought nothing')
})

t.test('with the rate limit off (the default) nothing is limited', async (t) => {
  const { app } = await setUp(t)
  const option = await createOption(app, 100)
  const answers = await Promise.all(Array.from({ length: 20 }, async () => await app.inject({
    method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, remoteAddress: '10.0.0.1',
  })))
  t.same(answers.map((a) => a.statusCode), Array(20).fill(201))
  t.equal(answers[0]?.headers['x-ratelimit-limit'], undefined, 'no rate-limit headers')
})

/** Writes `head`, then `drip` every 200 ms (or nothing) until the server closes the connection. */
async function slowClient (port: number, head: string, drip: string | null): Promise<{ answer: string, tookMs: number }> {
  const started = Date.now()
  const socket = net.connect(port, '127.0.0.1')
  let answer = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { answer += chunk })
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) => { socket.on('close', () => { resolve() }) })
  socket.write(head)
  const timer = drip === null ? undefined : setInterval(() => { if (!socket.destroyed) socket.write(drip) }, 200)
  await closed
  clearInterval(timer)
  return { answer, tookMs: Date.now() - started }
}
