/**
 * A TCP proxy in the test process, put between one service process and a
 * dependency, so a fault test can take the dependency away from that process
 * alone (the way a crashed PostgreSQL or a network cut looks from the client:
 * open connections reset, new ones refused) while the machine's shared
 * PostgreSQL keeps running for everyone else. Closed in teardown.
 */
import net from 'node:net'
import type { Teardown } from './environment'

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
  const server = net.createServer((client) => {
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
  })
  const listen = async (port: number): Promise<void> => {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
  }
  const cut = async (): Promise<void> => {
    const closed = new Promise<void>((resolve) => { server.close(() => { resolve() }) })
    for (const socket of sockets) {
      // Node 20 never completes a reset of a socket whose write side is already
      // ended (a pending shutdown), and the test process then spins at exit: destroy those.
      if (socket.writableEnded || socket.connecting) socket.destroy()
      else socket.resetAndDestroy()
    }
    sockets.clear()
    await closed
  }
  await listen(0)
  const port = (server.address() as net.AddressInfo).port
  t.teardown(async () => { if (server.listening) await cut() })
  return {
    port,
    cut,
    restore: async () => { await listen(port) },
    get accepted () { return accepted },
  }
}
