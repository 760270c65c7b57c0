/**
 * PostgreSQL pool and transactions.
 *
 * The pool's clients pipeline (node-postgres `pipeline: true`): statements
 * issued without waiting for the one before go out together and PostgreSQL
 * runs them in the order sent, so a transaction's BEGIN and its first reads
 * cost one round trip instead of one each. Every statement still gets its
 * own result or error; after an error inside a transaction the ones behind
 * it fail too (the transaction is aborted), so nothing runs half-applied.
 * @see https://node-postgres.com/features/transactions
 * @see https://node-postgres.com/features/pipelining
 */
import pg from 'pg'
import type { Logger } from 'pino'

export type Db = pg.Pool
export type DbClient = pg.PoolClient

/**
 * A named (prepared) statement as node-postgres' own Query. Given a config
 * object (`query({ name, text, values })`), pg copies it descriptor by
 * descriptor first (its cloneQueryConfig: about 1.6 µs alone, 5–7 µs a
 * purchase in the API's profile); built from the text, it copies nothing.
 */
class NamedStatement extends pg.Query {
  declare name: string
  constructor (name: string, text: string, values: unknown[]) {
    super(text, values)
    this.name = name
  }
}

/**
 * Runs the statement `name` on a client of the pool (prepared once per
 * connection, as `pool.query({ name, text, values })` would); resolves to its
 * result, rejects with PostgreSQL's error. For statements on a purchase's
 * path: `text` should be a constant (pg compares it with the prepared one on
 * every run).
 */
export function runNamed<R extends pg.QueryResultRow> (pool: Db, name: string, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
  // Given a Query, the pool hands the client it borrows its own callback, and answers with a
  // promise (the types say it returns the Query, as a client's query does): that promise, with
  // no async frame around it, as this runs on every purchase.
  return pool.query(new NamedStatement(name, text, values)) as unknown as Promise<pg.QueryResult<R>>
}

/** `sessionOptions`: settings for every connection of the pool, as libpq's `options` (`-c name=value …`). */
export function createPool (databaseUrl: string, max: number, log: Logger, sessionOptions?: string): Db {
  const pool = new pg.Pool({ connectionString: databaseUrl, max, connectionTimeoutMillis: 2000, pipeline: true, ...(sessionOptions === undefined ? {} : { options: sessionOptions }) })
  // Without these listeners a backend that dies (restart, admin kill) emits an
  // unhandled 'error' on an idle or checked-out client and crashes the process.
  pool.on('error', (err) => { log.warn({ err }, 'idle PostgreSQL client failed') })
  pool.on('connect', (client) => {
    client.on('error', (err) => { log.warn({ err }, 'PostgreSQL client failed') })
  })
  return pool
}

/**
 * Runs `fn` in one transaction on one borrowed client; rolls back on any
 * error. BEGIN is not waited for: it goes out with `fn`'s first statements
 * (pipelining), which PostgreSQL runs after it; should it fail, they fail too.
 */
export async function withTransaction<T> (pool: Db, fn: (client: DbClient) => Promise<T>): Promise<T> {
  const client = await pool.connect()
  let broken: Error | undefined
  try {
    const begun = client.query('begin')
    begun.catch(() => {}) // awaited below; meanwhile its failure must not be "unhandled"
    const result = await fn(client)
    await begun
    await client.query('commit')
    return result
  } catch (err) {
    await client.query('rollback').catch((rollbackErr: Error) => { broken = rollbackErr })
    throw err
  } finally {
    // A client whose rollback failed is in an unknown state: destroy it instead of reusing it.
    client.release(broken)
  }
}

/** SQLSTATE classes that mean "the database is unreachable or restarting", not "your data is wrong". */
export function isTransientDbError (err: unknown): boolean {
  const e = err as { code?: string, message?: string }
  if (typeof e?.code === 'string') {
    // connection, resources, admin shutdown; serialization failure and deadlock (retrying succeeds)
    if (/^(08|53|57P0[1-3]|40001|40P01)/.test(e.code)) return true
    if (['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN'].includes(e.code)) return true
  }
  const message = typeof e?.message === 'string' ? e.message : ''
  return /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message)
}

/** Creates the database named in `databaseUrl` when it does not exist (connects to `postgres` for that). */
export async function ensureDatabase (databaseUrl: string): Promise<boolean> {
  const url = new URL(databaseUrl)
  const name = decodeURIComponent(url.pathname.replace(/^\//, ''))
  if (name === '') throw new Error('DATABASE_URL names no database')
  url.pathname = '/postgres'
  const admin = new pg.Client({ connectionString: url.toString() })
  await admin.connect()
  try {
    const found = await admin.query('select 1 from pg_database where datname = $1', [name])
    if (found.rowCount !== 0) return false
    // Identifiers cannot be parameters; quote it the PostgreSQL way.
    await admin.query(`create database "${name.replace(/"/g, '""')}"`).catch((err: { code?: string }) => {
      if (err.code !== '42P04') throw err // another process created it first
    })
    return true
  } finally {
    await admin.end()
  }
}
