/**
 * Starts the API: builds the app, listens, and closes gracefully on
 * SIGTERM/SIGINT (stop accepting, answer what is in flight, close queues and
 * pools, exit 0).
 */
import './start-tracing' // first: it must load before what it instruments
import closeWithGrace from 'close-with-grace'
import { loadConfigOrExit } from '../shared/config'
import { openDatabaseServer } from '../shared/embedded-postgres'
import { createLogger } from '../shared/logger'
import { stopWhenOrphaned } from '../shared/orphan'
import { stopTracing } from '../shared/telemetry/tracing'
import { buildApp } from './app'

/** Longer than the purchase wait limit, so every request in flight gets its answer. */
export const API_SHUTDOWN_GRACE_MS = 5_000

async function main (): Promise<void> {
  const config = loadConfigOrExit()
  // Joined (or, run alone, started) before the app, stopped after it: its pools close first.
  const database = await openDatabaseServer(config.embeddedPostgres, createLogger(config, 'api'))
  const app = await buildApp(config)
  closeWithGrace({ delay: config.purchaseWaitMs + API_SHUTDOWN_GRACE_MS, logger: app.log }, async ({ signal, err }) => {
    if (err !== undefined) app.log.error({ err }, 'api closing after an error')
    else app.log.info({ signal }, 'api closing')
    await app.close()
    await database.stop()
    await stopTracing() // last: the spans of the close go out too
  })
  stopWhenOrphaned()
  await app.listen({ port: config.port, host: config.host })
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`api failed to start: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exit(1)
  })
}
