/**
 * api/plugins/graceful-close.ts: while the API closes, a request that still
 * arrives on a kept-alive connection gets the service's own 503 body, with a
 * code and Retry-After, never Fastify's bare one.
 */
import net from 'node:net'
import t from 'tap'
import { buildApp } from '../../api/app'
import { createOption } from '../support/app'
import { createTestEnvironment } from '../support/environment'
import { waitFor } from '../support/wait'

/** A kept-alive client on a raw socket, so a test decides exactly when each request goes out. */
async function connect (port: number): Promise<{ send: (request: string) => void, received: () => string, closed: Promise<void> }> {
  const socket = net.connect(port, '127.0.0.1')
  await new Promise<void>((resolve) => { socket.once('connect', resolve) })
  let text = ''
  socket.setEncoding('utf8')
  socket.on('data', (chunk: string) => { text += chunk })
  socket.on('error', () => {})
  const closed = new Promise<void>((resolve) => { socket.once('close', () => { resolve() }) })
  return { send: (request) => { socket.write(request) }, received: () => text, closed }
}

t.test('a request on a kept-alive connection while the API closes is a 503 SHUTTING_DOWN with Retry-After', async (t) => {
  const environment = await createTestEnvironment(t)
  const app = await buildApp(environment.config, { logger: false })
  let closed = false
  t.teardown(async () => { if (!closed) await app.close() })
  // Added after graceful-close's, so it runs once the API counts as closing (set below).
  let whileClosing = async (): Promise<void> => {}
  app.addHook('preClose', async () => { await whileClosing() })
  const option = await createOption(app, 5)
  const { port } = new URL(await app.listen({ port: 0, host: '127.0.0.1' }))
  const client = await connect(Number(port))
  const read = `GET /ticket_options/${option} HTTP/1.1\r\nHost: x\r\n\r\n`

  client.send(read)
  await waitFor(() => client.received(), (text) => text.includes('"allocation":5'), 5000)
  const before = client.received()
  t.match(before, /^HTTP\/1.1 200 /, 'the connection is kept alive after a first answer')

  // The next request arrives on the open connection while the API closes, before any sweep reaches it.
  let answer = ''
  whileClosing = async () => {
    client.send(read)
    answer = (await waitFor(() => client.received(), (text) => text.length > before.length && text.endsWith('}'), 5000)).slice(before.length)
  }
  await app.close()
  closed = true

  t.match(answer, /^HTTP\/1.1 503 /)
  t.match(answer, /\r\nretry-after: 1\r\n/i)
  t.match(answer, /\r\nconnection: close\r\n/i)
  t.same(JSON.parse(answer.split('\r\n\r\n')[1] ?? ''), {
    statusCode: 503, error: 'Service Unavailable', message: 'The service is shutting down, try again shortly', code: 'SHUTTING_DOWN',
  })
  await client.closed
})
