/**
 * Free TCP ports for tests that need a port nobody listens on, or a port to
 * stop a server on and start it again.
 */
import net from 'node:net'

// Ports below Linux's ephemeral range (32768-60999 here): listen(0) and
// outgoing connections never take them, so a port found free stays free while
// a test stops a server and starts it again on it, even with other test files
// (API processes on port 0, silent servers) running beside it.
const LOW_PORT_MIN = 20_000
const LOW_PORT_MAX = 32_000

/** A TCP port of 127.0.0.1 nobody listens on, outside the ephemeral range. */
export async function freePort (): Promise<number> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const port = LOW_PORT_MIN + Math.floor(Math.random() * (LOW_PORT_MAX - LOW_PORT_MIN))
    const free = await new Promise<boolean>((resolve) => {
      const server = net.createServer()
      server.once('error', () => { resolve(false) })
      server.listen(port, '127.0.0.1', () => { server.close(() => { resolve(true) }) })
    })
    if (free) return port
  }
  throw new Error('no free port found')
}
