/**
 * Starts the embedded PostgreSQL in a process of its own, for
 * test/shared/embedded-postgres.test.ts to run as another OS user: data
 * folder and port from EMBEDDED_POSTGRES_DIR and EMBEDDED_POSTGRES_PORT.
 * Prints one JSON line (who ran it, and what the server answered), stops it.
 */
import pg from 'pg'
import pino from 'pino'
import { loadConfig } from '../../shared/config'
import { startEmbeddedPostgres } from '../../shared/embedded-postgres'

async function main (): Promise<void> {
  const settings = loadConfig(process.env).embeddedPostgres
  if (settings === null) throw new Error('DATABASE_URL is set: nothing embedded to start')
  const server = await startEmbeddedPostgres(settings, pino({ level: 'silent' }))
  const client = new pg.Client({ host: '127.0.0.1', port: settings.port, user: 'postgres', database: 'postgres' })
  await client.connect()
  const { rows } = await client.query('select 1 as one')
  await client.end()
  await server.stop()
  process.stdout.write(`${JSON.stringify({ uid: process.getuid?.(), owned: server.owned, answered: rows[0] })}\n`)
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
