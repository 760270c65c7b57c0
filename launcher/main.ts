/**
 * `npm start`: the whole service on one machine with nothing but Node.js
 * (API.md "Where it runs"). It starts the embedded PostgreSQL when no
 * DATABASE_URL is set (or uses yours), migrates, then runs the API and one
 * worker as child processes and stops them, then PostgreSQL, on Ctrl-C or
 * SIGTERM; if either child dies, it stops everything and exits 1.
 *
 * The children run in process groups of their own, so a Ctrl-C reaches this
 * process alone and each child gets exactly one SIGTERM from it (a second
 * signal would cut the child's graceful close short). They hold an IPC
 * channel to this process and close by themselves if it dies
 * (shared/orphan.ts). They join the embedded server this process owns.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { loadConfigOrExit } from '../shared/config'
import { ensureDatabase } from '../shared/db'
import { openDatabaseServer } from '../shared/embedded-postgres'
import { createLogger } from '../shared/logger'
import { redactUrl } from '../shared/redact-url'
import { prepareQueueStore } from '../shared/queues/queue-backend'
import { migrate } from '../migrations/migrate'
import { WORKER_SHUTDOWN_BUDGET_MS } from '../worker/main'

const ROOT = path.resolve(__dirname, '..')
const CHILDREN = { api: 'api/server.ts', worker: 'worker/main.ts' } as const

async function main (): Promise<void> {
  const config = loadConfigOrExit()
  const log = createLogger(config, 'start')
  const database = await openDatabaseServer(config.embeddedPostgres, log)
  let stopping = false
  const children = new Map<string, ChildProcess>()

  const stopAll = async (exitCode: number): Promise<never> => {
    stopping = true
    const exits = [...children.values()].map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
      child.kill('SIGTERM')
      // The worker's own budget, plus a margin; a child past it is killed.
      const timer = setTimeout(() => { child.kill('SIGKILL') }, WORKER_SHUTDOWN_BUDGET_MS + 5000)
      await exited
      clearTimeout(timer)
    })
    await Promise.all(exits)
    await database.stop()
    log.info({ exitCode }, 'stopped')
    log.flush?.()
    process.exit(exitCode)
  }
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (stopping) return
      log.info({ signal }, 'stopping the API and the worker')
      void stopAll(0)
    })
  }

  try {
    if (await ensureDatabase(config.databaseUrl)) log.info({ database: redactUrl(config.databaseUrl) }, 'database created')
    const applied = await migrate(config.databaseUrl, log)
    await prepareQueueStore(config)
    log.info({ applied: applied.length }, applied.length === 0 ? 'schema is up to date' : 'migrations done')
  } catch (err) {
    log.error({ err }, 'migration failed')
    await stopAll(1)
  }

  for (const [name, file] of Object.entries(CHILDREN)) {
    const child = spawn(process.execPath, [...process.execArgv, path.join(ROOT, file)], {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    })
    children.set(name, child)
    child.on('exit', (code, signal) => {
      if (stopping) return
      log.error({ process: name, code, signal }, `${name} exited; stopping`)
      void stopAll(1)
    })
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`start failed: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
