/**
 * The worker process: applies queued purchases of every active option.
 * Scale it with replicas; BullMQ's global concurrency keeps each option serial.
 * On SIGTERM/SIGINT it finishes the purchase it is applying, takes no new
 * job, closes its connections in reverse order of opening and exits 0.
 */
import './start-tracing' // first: it must load before what it instruments
import closeWithGrace from 'close-with-grace'
import type { Logger } from 'pino'
import { loadConfigOrExit, type Config } from '../shared/config'
import { createPool } from '../shared/db'
import { openDatabaseServer } from '../shared/embedded-postgres'
import { createLogger } from '../shared/logger'
import { stopWhenOrphaned } from '../shared/orphan'
import { stopTracing } from '../shared/telemetry/tracing'
import { openQueueBackend } from '../shared/queues/queue-backend'
import { startHealthServer, type HealthServer } from './monitoring/health-server'
import { startHoldSweeper } from './hold-expiry-sweeper'
import { startKeySweeper } from './idempotency-key-sweeper'
import { WorkerMetrics } from './monitoring/metrics'
import { OptionQueues } from './purchasing/option-queues'

export interface RunningWorker {
  optionQueues: OptionQueues
  /** the port of /health/live and /health/ready */
  healthPort: number
  close: () => Promise<void>
}

export async function startWorker (config: Config, log: Logger): Promise<RunningWorker> {
  const db = createPool(config.databaseUrl, config.databasePoolSize, log)
  const backend = openQueueBackend(config, log, 'worker')
  const metrics = new WorkerMetrics()
  metrics.watchDependencies(db, backend)
  // Up before the queues start, so a worker stuck waiting for its stores is live but not ready.
  let health: HealthServer
  try {
    health = await startHealthServer({ host: config.host, port: config.workerHealthPort, db, queues: backend, log, metrics })
  } catch (err) {
    await backend.close()
    await db.end()
    throw err
  }
  const optionQueues = new OptionQueues({ config, db, backend, log, metrics })
  await optionQueues.start()
  const keySweeper = startKeySweeper(db, log)
  const holdSweeper = startHoldSweeper(db, log, config.holdSweepMs)
  return {
    optionQueues,
    healthPort: health.port,
    // Once, however often it is called (a signal during a close, a test's teardown after its own close).
    close: once(async () => {
      await holdSweeper.stop()
      await keySweeper.stop()
      await optionQueues.close()
      await backend.close()
      await db.end()
      await health.close()
    }),
  }
}

function once (fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined
  return async () => { done ??= fn(); await done }
}

/** How long shutdown may take before the process is ended anyway; compose waits longer (stop_grace_period). */
export const WORKER_SHUTDOWN_BUDGET_MS = 20_000

async function main (): Promise<void> {
  const config = loadConfigOrExit()
  const log = createLogger(config, 'worker')
  // Joined (or, run alone, started) before the worker, stopped after it: its pools close first.
  const database = await openDatabaseServer(config.embeddedPostgres, log)
  const worker = await startWorker(config, log)
  log.info({ batchSize: config.workerBatchSize }, 'worker started')
  closeWithGrace({ delay: WORKER_SHUTDOWN_BUDGET_MS, logger: log }, async ({ signal, err }) => {
    if (err !== undefined) log.error({ err }, 'worker closing after an error')
    else log.info({ signal }, 'worker closing')
    await worker.close()
    await database.stop()
    await stopTracing() // last: the spans of the close go out too
    log.info('worker closed')
  })
  stopWhenOrphaned()
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`worker failed to start: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exit(1)
  })
}
