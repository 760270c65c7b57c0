import t from 'tap'
import net from 'node:net'
import pino from 'pino'
import { commandNeverSent, createProducerConnection, createWorkerConnection, isCluster } from '../../shared/redis'
import { freePort } from '../support/free-port'
import { waitFor } from '../support/wait'

t.test('a connection stuck between connect and ready is started over', async (t) => {
  // Accepts connections and never answers: the INFO ready check waits forever.
  let accepted = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => { accepted++; sockets.add(socket); socket.on('error', () => {}) })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => { server.close(resolve) })
  })
  const { port } = server.address() as net.AddressInfo
  const lines: string[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } })
  const redis = createWorkerConnection(`redis://127.0.0.1:${port}`, log, 'stuck-test', 200)
  t.teardown(() => { redis.disconnect() })

  // One stall, then a new connection (after ioredis's own retry delay, which grows with each stall).
  await waitFor(() => accepted, (n) => n >= 2, 10_000)
  t.ok(accepted >= 2, `started over after the stall (${accepted} connections)`)
  t.ok(lines.some((line) => line.includes('redis connection not ready in time, reconnecting')), 'and said so')
  t.not(redis.status, 'ready')
})

t.test('a healthy connection is left alone', async (t) => {
  const lines: string[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } })
  const redis = createWorkerConnection(process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379', log, 'healthy-test', 200)
  t.teardown(async () => { await redis.quit() })
  t.equal(await redis.ping(), 'PONG')
  await new Promise((resolve) => setTimeout(resolve, 500))
  t.equal(redis.status, 'ready')
  t.same(lines.filter((line) => line.includes('not ready in time')), [])
})

t.test('a cluster the API cannot reach refuses commands at once, and says nothing was sent', async (t) => {
  // Nothing listens there: the cluster never becomes ready.
  const port = await freePort()
  const log = pino({ level: 'silent' })
  const redis = createProducerConnection([{ host: '127.0.0.1', port }], log, 'unreachable-cluster')
  t.teardown(() => { redis.disconnect() })
  t.ok(isCluster(redis), 'REDIS_CLUSTER_NODES gives a Cluster')
  const started = Date.now()
  const err = await redis.set('key', 'value').then(() => null, (e: unknown) => e)
  t.ok(Date.now() - started < 1500, 'refused at once, not queued')
  // Once it has given up connecting, later commands are refused the same way.
  await new Promise((resolve) => setTimeout(resolve, 300))
  const later = await redis.set('key', 'value').then(() => null, (e: unknown) => e)
  t.equal(commandNeverSent(later), true, `later: ${String(later)}`)
  t.match(String(err), /Cluster isn't ready|None of startup nodes is available/)
  t.equal(commandNeverSent(err), true, 'the API may answer 503 without voiding anything')
  t.equal(commandNeverSent(new Error('Connection is closed.')), false, 'a lost connection is ambiguous')
  const plain = createWorkerConnection('redis://127.0.0.1:1', log, 'plain')
  t.teardown(() => { plain.disconnect() })
  t.equal(isCluster(plain), false, 'REDIS_URL gives one connection')
})
