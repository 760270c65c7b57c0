/**
 * A TCP server that accepts connections and never says a word: a hung
 * PostgreSQL or Redis, for tests that must not wait forever on one.
 */
import net from 'node:net'
import type { Teardown } from './environment'

/** Starts one on a free port of 127.0.0.1 and returns the port; closed in teardown. */
export async function startSilentServer (t: Teardown): Promise<number> {
  const sockets = new Set<net.Socket>()
  const server = net.createServer((socket) => { sockets.add(socket); socket.on('error', () => {}) })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => { server.close(resolve) })
  })
  return (server.address() as net.AddressInfo).port
}
