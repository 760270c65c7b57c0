/**
 * A redis-server of the test's own, on a free port, for fault tests that stop
 * and restart Redis: the machine's shared Redis is never touched. With
 * `appendonly` (what production compose runs) a restart keeps the queues.
 * Killed in teardown, its directory removed.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import type { Teardown } from './environment'
import { freePort } from './free-port'

export interface ThrowawayRedis {
  port: number
  url: string
  /** Stops the server: SIGTERM saves the AOF first (a graceful shutdown), SIGKILL does not. */
  stop: (signal?: 'SIGTERM' | 'SIGKILL') => Promise<void>
  /** Starts it again on the same port and directory; resolves when it answers PING. */
  start: () => Promise<void>
}

async function withTimeout<T> (promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([promise, new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`no answer in ${ms} ms`)) }, ms) })])
  } finally {
    clearTimeout(timer)
  }
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
          // Bounded: whatever answers on the port must be our Redis, and soon.
          if (await withTimeout((async () => {
            if (probe.status !== 'ready') await probe.connect()
            return await probe.ping()
          })(), 1000) === 'PONG') return
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
