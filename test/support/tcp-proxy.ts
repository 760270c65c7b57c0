/**
 * A TCP proxy in the test process, put between one service process and a
 * dependency, so a fault test can take the dependency away from that process
 * alone (the way a crashed PostgreSQL or a network cut looks from the client:
 * open connections reset, new ones refused) while the machine's shared
 * PostgreSQL keeps running for everyone else. Closed in teardown.
 */
import net from 'node:net'
import type { Teardown } from './environment'
import { freePort } from './free-port'

export interface TcpProxy {
  port: number
  /** Resets every open connection and refuses new ones until `restore`. */
  cut: () => Promise<void>
  /** Listens again on the same port. */
  restore: () => Promise<void>
  /** connections accepted so far */
  readonly accepted: number
}

export async function startTcpProxy (t: Teardown, target: { host: string, port: number }): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>()
  let accepted = 0
  const relay = (client: net.Socket): void => {
    accepted++
    const upstream = net.connect(target.port, target.host)
    sockets.add(client)
    sockets.add(upstream)
    const drop = (): void => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on('error', drop).on('close', drop)
    upstream.on('error', drop).on('close', drop)
    client.pipe(upstream)
    upstream.pipe(client)
  }
  // A new server for every listen: a closing server may wait on its last
  // connections for a while, and must not keep the next one from listening.
  let server: net.Server | undefined
  const listen = async (port: number): Promise<void> => {
    const next = net.createServer(relay)
    await new Promise<void>((resolve, reject) => {
      next.once('error', reject)
      next.listen(port, '127.0.0.1', () => { next.off('error', reject); resolve() })
    })
    server = next
  }
  const cut = async (): Promise<void> => {
    const current = server
    server = undefined
    if (current === undefined) return
    // Stops listening at once; the callback waits for the connections, which are destroyed next.
    const closed = new Promise<void>((resolve) => { current.close(() => { resolve() }) })
    for (const socket of sockets) {
      // Node 20 never completes a reset of a socket whose write side is already
      // ended (a pending shutdown), and the test process then spins at exit: destroy those.
      if (socket.writableEnded || socket.connecting) socket.destroy()
      else socket.resetAndDestroy()
    }
    sockets.clear()
    // Bounded, so a socket Node is slow to let go of cannot hang the test.
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 1000).unref())])
  }
  // A port outside the ephemeral range, so nothing else takes it while the proxy is cut.
  const port = await freePort()
  await listen(port)
  t.teardown(cut)
  return {
    port,
    cut,
    restore: async () => { await listen(port) },
    get accepted () { return accepted },
  }
}
