/**
 * A redis-server of the test's own, on a free port, for fault tests that stop
 * and restart Redis: the machine's shared Redis is never touched. With
 * `appendonly` (what production compose runs) a restart keeps the queues.
 * Killed in teardown, its directory removed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import type { Teardown } from './environment'

/** A TCP port nobody listens on right now. */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => { resolve(port) })
    })
  })
}

export interface ThrowawayRedis {
  port: number
  url: string
  /** Stops the server: SIGTERM saves the AOF first (a graceful shutdown), SIGKILL does not. */
  stop: (signal?: 'SIGTERM' | 'SIGKILL') => Promise<void>
  /** Starts it again on the same port and directory; resolves when it answers PING. */
  start: () => Promise<void>
}

export async function startThrowawayRedis (t: Teardown, options: { appendonly: boolean }): Promise<ThrowawayRedis> {
  const port = await freePort()
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fault-redis-'))
  const url = `redis://127.0.0.1:${port}`
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()

  const start = async (): Promise<void> => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--dir', dir,
      '--appendonly', options.appendonly ? 'yes' : 'no', '--maxmemory-policy', 'noeviction']
    const started = spawn('redis-server', args, { stdio: 'ignore' })
    child = started
    exited = new Promise((resolve) => { started.once('exit', () => { resolve() }) })
    const probe = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    probe.on('error', () => {})
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          if (probe.status !== 'ready') await probe.connect()
          if (await probe.ping() === 'PONG') return
        } catch (err) {
          if (attempt >= 100 || started.exitCode !== null) throw new Error(`redis-server on ${port} did not start: ${String(err)}`)
          probe.disconnect()
          await new Promise((resolve) => setTimeout(resolve, 50))
        }
      }
    } finally {
      probe.disconnect()
    }
  }

  const stop = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill(signal)
    await exited
  }

  t.teardown(async () => {
    await stop('SIGKILL')
    rmSync(dir, { recursive: true, force: true })
  })
  await start()
  return { port, url, stop, start }
}
