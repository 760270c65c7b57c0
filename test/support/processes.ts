/**
 * Starts the real entry points (api/server.ts, worker/main.ts) as child
 * processes, configured only through environment variables, the way compose
 * runs them. Each is killed in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import type { Teardown } from './environment'

export const ROOT = path.resolve(__dirname, '..', '..')

export interface ServiceProcess {
  child: ChildProcess
  /** for an API: its base URL */
  url: string
  /** every line the process wrote, for assertions and failure reports */
  output: string[]
  exited: Promise<number | null>
}

const ENTRY_POINTS = {
  api: 'api/server.ts',
  worker: 'worker/main.ts',
  migrate: 'migrations/migrate.ts',
} as const

/** Starts a process and resolves once it is ready (API listening, worker started). */
export async function startProcess (t: Teardown, kind: keyof typeof ENTRY_POINTS, env: Record<string, string>, readyTimeoutMs = 20_000): Promise<ServiceProcess> {
  const child = spawn(process.execPath, ['--import', 'tsx', ENTRY_POINTS[kind]], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const output: string[] = []
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
  })
  let url = ''
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`${kind} not ready after ${readyTimeoutMs} ms:\n${output.join('\n')}`)) }, readyTimeoutMs)
    const onLine = (line: string): void => {
      output.push(line)
      const listening = /Server listening at (http:\/\/127\.0\.0\.1:\d+)/.exec(line)
      if (listening?.[1] !== undefined) url = listening[1]
      if ((kind === 'api' && url !== '') || (kind === 'worker' && line.includes('worker started'))) {
        clearTimeout(timer)
        resolve()
      }
    }
    for (const stream of [child.stdout, child.stderr]) {
      let buffered = ''
      stream?.setEncoding('utf8')
      stream?.on('data', (chunk: string) => {
        buffered += chunk
        const lines = buffered.split('\n')
        buffered = lines.pop() ?? ''
        for (const line of lines) onLine(line)
      })
    }
    void exited.then((code) => {
      clearTimeout(timer)
      if (kind === 'migrate' && code === 0) resolve()
      else reject(new Error(`${kind} exited with ${code} before it was ready:\n${output.join('\n')}`))
    })
  })
  return { child, url, output, exited }
}
