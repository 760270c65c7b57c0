/**
 * Limits and abuse: BODY_LIMIT_BYTES, REQUEST_TIMEOUT_MS and
 * RATE_LIMIT_PURCHASES_PER_MINUTE (shared/config.ts, api/app.ts,
 * api/plugins/rate-limit.ts).
 */
import net from 'node:net'
import t from 'tap'
import { createOption, setUp } from '../support/app'

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
  const { app } = await setUp(t, { worker: false, env: { REQUEST_TIMEOUT_MS: '1500', PURCHASE_WAIT_MS: '400' } })
  const option = await createOption(app, 5)
  const { port } = new URL(await app.listen({ port: 0, host: '127.0.0.1' }))

  // A slow client trickles its headers, a byte every 200 ms: Node's requestTimeout answers 408.
  const slow = await slowClient(Number(port), 'GET /ticket_options/' + option + ' HTTP/1.1\r\nHost: x\r\nX-Slow: ', 'a')
  t.match(slow.answer, /^HTTP\/1.1 408 /)
  t.same(JSON.parse(slow.answer.split('\r\n\r\n')[1] ?? ''), { statusCode: 408, error: 'Request Timeout', message: 'The request did not arrive in time', code: 'REQUEST_TIMEOUT' })
  t.ok(slow.tookMs >= 1400 && slow.tookMs < 3500, `cut off after ${slow.tookMs} ms`)

  // A client that stops in the middle of its body: the idle socket is closed (connectionTimeout), nothing is answered.
  const stalled = await slowClient(Number(port), `POST /ticket_options HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name":`, null)
  t.equal(stalled.answer, '')
  t.ok(stalled.tookMs >= 1400 && stalled.tookMs < 3500, `closed after ${stalled.tookMs} ms`)

  // No worker: the purchase waits PURCHASE_WAIT_MS and answers 202 over a real connection.
  const res = await fetch(`http://127.0.0.1:${port}/ticket_options/${option}/purchases`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ quantity: 1, user_id: USER }),
  })
  t.equal(res.status, 202)
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
