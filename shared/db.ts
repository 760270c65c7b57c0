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
  /** pg calls it with the result or the error (its types leave it out) */
  declare callback: ((err: Error | null, result: pg.QueryResult) => void) | undefined
  constructor (name: string, text: string, values: unknown[]) {
    super(text, values)
    this.name = name
  }
}

/**
 * One connection of a pool of one, kept checked out for one kind of statement
 * (the API's batches at once, on AT_ONCE_SESSION). A statement then costs no
 * checkout and release: pg-pool adds two listeners, two timers and a tick to
 * every `pool.query`, about 10 µs of the caller's CPU a statement (measured
 * against a client kept checked out, 2,000 statements a round, 20 rounds). A
 * connection that fails or ends is given back to the pool, which closes it,
 * and the next statement connects anew; an error of a statement alone keeps
 * the connection (and the statements prepared on it).
 */
export class DedicatedConnection {
  private client: pg.PoolClient | null = null
  private connecting: Promise<pg.PoolClient> | null = null
  /** the last statement sent, settled or not: `end` waits for it */
  private last: Promise<unknown> = Promise.resolve()

  constructor (private readonly pool: Db) {}

  /**
   * Runs the statement `name`, prepared once per connection (as
   * `query({ name, text, values })` would); rejects with PostgreSQL's or the
   * connection's error. `text` should be a constant: pg compares it with the
   * prepared one on every run.
   */
  run<R extends pg.QueryResultRow> (name: string, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
    const statement = new NamedStatement(name, text, values)
    const { client } = this
    const result = client !== null ? this.submit<R>(client, statement) : this.connected().then(async (c) => await this.submit<R>(c, statement))
    this.last = result.catch(() => {})
    return result
  }

  /** Closes the connection once the statement in flight, if any, has settled. */
  async end (): Promise<void> {
    await this.last
    await this.connecting?.catch(() => {})
    const { client } = this
    this.client = null
    client?.release()
    await this.pool.end()
  }

  private connected (): Promise<pg.PoolClient> {
    this.connecting ??= this.pool.connect().then((client) => {
      this.connecting = null
      client.once('error', (err) => { this.drop(client, err) })
      client.once('end', () => { this.drop(client, new Error('the connection ended')) })
      this.client = client
      return client
    }, (err: unknown) => {
      this.connecting = null
      throw err
    })
    return this.connecting
  }

  /**
   * A statement on the client as a promise. Only an error of the statement
   * (severity ERROR) leaves the connection usable; any other (FATAL, as when
   * the backend is terminated under it, or the socket's) drops it at once:
   * its 'end' may come after the caller's next statement.
   */
  private submit<R extends pg.QueryResultRow> (client: pg.PoolClient, statement: NamedStatement): Promise<pg.QueryResult<R>> {
    return new Promise((resolve, reject) => {
      statement.callback = (err, result) => {
        if (err === null || err === undefined) {
          resolve(result as pg.QueryResult<R>)
          return
        }
        if ((err as { severity?: string }).severity !== 'ERROR') this.drop(client, err)
        reject(err)
      }
      // Given a Query, a client answers with the Query itself and calls its callback.
      client.query(statement)
    })
  }

  /** Gives a failed connection back to the pool, which closes it; once. */
  private drop (client: pg.PoolClient, err: Error): void {
    if (this.client !== client) return
    this.client = null
    client.release(err)
  }
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
