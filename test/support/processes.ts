/**
 * Starts the real entry points (api/server.ts, worker/main.ts) as child
 * processes, configured only through environment variables, the way compose
 * runs them. Each is killed in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import type { Teardown } from './environment'

export const ROOT = path.resolve(__dirname, '..', '..')

/**
 * How a child process runs our TypeScript. Under tap, with the test process's
 * own loaders (its TypeScript compiler, source maps and process tracker), so
 * that the child's coverage maps onto the same compiled code and counts in
 * tap's report; a child compiled differently (tsx) would be left out of it.
 * Elsewhere (the bench, a shell) with tsx, as `npm start` runs.
 */
export function nodeArgs (): string[] {
  if (process.env.TAP !== '1') return ['--import', 'tsx']
  return process.execArgv.filter((arg) => arg.startsWith('--import') || arg === '--enable-source-maps')
}

/** The variables of tap's loaders and process tracker that a child needs beside `nodeArgs()`. */
export function coverageEnv (): Record<string, string> {
  const kept: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (value !== undefined && (name.startsWith('_TAPJS_PROCESSINFO_') || name.startsWith('TS_NODE_') || name === 'NODE_OPTIONS')) kept[name] = value
  }
  return kept
}

export interface ServiceProcess {
  child: ChildProcess
  /** for an API: its base URL */
  url: string
  /** every line the process wrote, for assertions and failure reports */
  output: string[]
  exited: Promise<number | null>
}

/** How long a process may take to close in teardown before it is killed (ms). */
const STOP_GRACE_MS = 5000

const ENTRY_POINTS = {
  api: 'api/server.ts',
  worker: 'worker/main.ts',
  migrate: 'migrations/migrate.ts',
} as const

/** Starts a process and resolves once it is ready (API listening, worker started). */
export async function startProcess (t: Teardown, kind: keyof typeof ENTRY_POINTS, env: Record<string, string>, readyTimeoutMs = 20_000): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [...nodeArgs(), ENTRY_POINTS[kind]], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...coverageEnv(), ...env, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const output: string[] = []
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    // SIGTERM first: a process that closes writes its coverage; one that hangs is killed.
    child.kill('SIGTERM')
    const timer = setTimeout(() => { child.kill('SIGKILL') }, STOP_GRACE_MS)
    await exited
    clearTimeout(timer)
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
