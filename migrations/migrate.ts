/**
 * Applies the numbered `.sql` files of this folder once each, in order, and
 * records them in `schema_migrations`. Each file runs in its own transaction
 * under a transaction-scoped advisory lock, so several processes starting at
 * once (compose replicas, parallel tests) apply each file exactly once.
 * Files are forward only and never edited once landed.
 *
 * Run: `npm run migrate` (creates the database first when it is missing).
 */
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import pg from 'pg'
import type { Logger } from 'pino'
import { loadConfigOrExit } from '../shared/config'
import { ensureDatabase } from '../shared/db'
import { openDatabaseServer } from '../shared/embedded-postgres'
import { prepareQueueStore } from '../shared/queues/queue-backend'
import { createLogger } from '../shared/logger'
import { redactUrl } from '../shared/redact-url'

// Any constant works; it only has to be the same for every runner of this schema.
const MIGRATION_LOCK_KEY = 727_001

const FILE_NAME = /^(\d{4})_[a-z0-9_]+\.sql$/

export interface MigrationFile {
  version: number
  name: string
  file: string
}

export async function listMigrations (dir = migrationsDir()): Promise<MigrationFile[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.sql')).sort()
  return files.map((name) => {
    const match = FILE_NAME.exec(name)
    if (match === null) throw new Error(`migration file ${name} is not named NNNN_words.sql`)
    return { version: Number(match[1]), name, file: path.join(dir, name) }
  })
}

/** Where the `.sql` files are, both from source and from `dist/` (which has no copies). */
function migrationsDir (): string {
  return __dirname.includes(`${path.sep}dist${path.sep}`)
    ? path.resolve(__dirname, '..', '..', 'migrations')
    : __dirname
}

/** Applies pending migrations; returns the names of those it applied. */
export async function migrate (databaseUrl: string, log?: Logger): Promise<string[]> {
  const migrations = await listMigrations()
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  const applied: string[] = []
  try {
    for (const migration of migrations) {
      await client.query('begin')
      try {
        await client.query('select pg_advisory_xact_lock($1::bigint)', [MIGRATION_LOCK_KEY])
        await client.query(`create table if not exists schema_migrations (
          version    integer primary key,
          name       text not null,
          applied_at timestamptz not null default now()
        )`)
        const inserted = await client.query(
          'insert into schema_migrations (version, name) values ($1, $2) on conflict (version) do nothing',
          [migration.version, migration.name]
        )
        if (inserted.rowCount === 1) {
          await client.query(await readFile(migration.file, 'utf8'))
          applied.push(migration.name)
          log?.info({ migration: migration.name }, 'migration applied')
        }
        await client.query('commit')
      } catch (err) {
        await client.query('rollback').catch(() => {})
        throw err
      }
    }
  } finally {
    await client.end()
  }
  return applied
}

async function main (): Promise<void> {
  const config = loadConfigOrExit()
  const log = createLogger(config, 'migrate')
  const server = await openDatabaseServer(config.embeddedPostgres, log)
  try {
    if (await ensureDatabase(config.databaseUrl)) log.info({ database: redactUrl(config.databaseUrl) }, 'database created')
    const applied = await migrate(config.databaseUrl, log)
    await prepareQueueStore(config)
    log.info({ applied: applied.length }, applied.length === 0 ? 'schema is up to date' : 'migrations done')
  } finally {
    await server.stop()
  }
  log.flush?.()
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`migration failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
    process.exit(1)
  })
}
