/**
 * The queues on PostgreSQL: BullMQ's own PostgreSQL backend (its tables in
 * the `bullmq` schema, migrated at start), plus the service's registry and
 * line numbers in plain tables (migrations/0004_queue_tables.sql), and
 * LISTEN/NOTIFY for wake-ups and outcomes. With it the service needs no
 * Redis at all (API.md "Where it runs").
 *
 * Two things differ from Redis on purpose (DESIGN.md "Two queue backends"):
 * - Outcomes are sent with pg_notify inside the transaction that applies
 *   them, so a buyer hears of a batch exactly when it commits, never of one
 *   that rolled back; nothing waits through QueueEvents, whose event reads
 *   skip ids that commit late.
 * - Every Queue and Worker of the process shares one BullMQ connection (a
 *   pool and one LISTEN client) instead of one each, so connections do not
 *   grow with the options in use.
 *
 * On PostgreSQL the database is the namespace: QUEUE_PREFIX only names the
 * notification channels.
 */
import { createHash } from 'node:crypto'
import { PostgresConnection, PostgresQueueBackend, Queue, runMigrations, Worker, type PostgresConnectionOptions, type Processor, type QueueBaseOptions } from 'bullmq'
import pg from 'pg'
import type { Logger } from 'pino'
import type { Config } from '../config'
import { withTransaction, type Db, type DbClient } from '../db'
import { postgresAnswers } from '../health-checks'
import { lineMessageReader, type AppliedMessage, type ApplyingMessage } from '../purchases/purchase-outcomes'
import { queueTelemetry } from '../telemetry/purchase-spans'
import type { QueueBackend, QueueBackendRole, QueueCounts, QueueSettings, WorkerSettings } from './queue-backend-types'
import { purchaseOutcomesChannel, purchaseQueueName, queueWakeupChannel } from './queue-names'

/** PostgreSQL refuses a notification payload of 8000 bytes or more; outcomes are split below it. */
export const NOTIFY_PAYLOAD_MAX_BYTES = 7900

/** Channel names are identifiers: at most 63 bytes. A longer prefix is hashed into one. */
export function channelName (name: string): string {
  return Buffer.byteLength(name) <= 63 ? name : `ch_${createHash('sha1').update(name).digest('hex')}`
}

/**
 * The messages of one committed batch, each under the payload limit: the
 * outcomes split over as many as needed, the batch's count on the first only
 * (so the option's rate counts it once).
 */
export function appliedPayloads (message: Omit<AppliedMessage, 'type'>, maxBytes = NOTIFY_PAYLOAD_MAX_BYTES): string[] {
  const head = { type: 'applied' as const, ticketOptionId: message.ticketOptionId, appliedLine: message.appliedLine, at: message.at }
  const payloads: string[] = []
  let chunk: string[] = []
  let size = 0
  const flush = (): void => {
    payloads.push(`${JSON.stringify({ ...head, count: payloads.length === 0 ? message.count : 0 }).slice(0, -1)},"outcomes":[${chunk.join(',')}]}`)
    chunk = []
    size = 0
  }
  const envelope = Buffer.byteLength(JSON.stringify({ ...head, count: message.count, outcomes: [] }))
  for (const outcome of message.outcomes) {
    const json = JSON.stringify(outcome)
    const bytes = Buffer.byteLength(json) + 1
    if (chunk.length > 0 && envelope + size + bytes > maxBytes) flush()
    chunk.push(json)
    size += bytes
  }
  if (chunk.length > 0) flush()
  return payloads
}

/** How often a worker looks again at a queue whose global concurrency is used up (ms). */
export const FULL_QUEUE_POLL_MS = 250

/**
 * A BullMQ backend on the process's shared connection. BullMQ's own factory
 * gives every Queue and Worker a pool and a LISTEN connection of its own;
 * a backend that does not own its connection skips what an owner does when
 * the shared LISTEN client is rebuilt, so this one does it: listen again and
 * end the wait parked on the dead client.
 *
 * It also keeps idle workers from spinning. With global concurrency 1, every
 * worker replica but the one applying an option's batch finds nothing to
 * claim, and BullMQ's wait (`waitForJob`) ends at once whenever a job waits,
 * claimable or not: those workers loop on four queries each, without pause
 * (measured: 2 idle workers made 1,000 purchases take 36 s instead of 6).
 * While the queue's global concurrency is used up, they look again every
 * FULL_QUEUE_POLL_MS instead; a worker killed mid-job is taken over after
 * its lock and the stalled check, as before.
 */
class SharedConnectionBackend extends PostgresQueueBackend {
  private readonly shared: PostgresConnection
  private pollTimer: NodeJS.Timeout | undefined
  private endPoll: (() => void) | undefined
  private readonly relisten = (): void => {
    const self = this as unknown as { listening: boolean, listeningEvents: boolean, cancelWait?: () => void, cancelEventWait?: () => void }
    self.listening = false
    self.listeningEvents = false
    self.cancelWait?.()
    self.cancelEventWait?.()
  }

  constructor (connection: PostgresConnection, name: string, opts: QueueBaseOptions<PostgresConnectionOptions>) {
    super(connection, name, opts, false)
    this.shared = connection
    connection.on('listenerinvalidated', this.relisten)
  }

  override async close (force = false): Promise<void> {
    this.shared.off('listenerinvalidated', this.relisten)
    this.endPoll?.()
    await super.close(force)
  }

  override async waitForJob (blockTimeout: number): Promise<{ member: string, score: number } | null> {
    if (!await this.concurrencyUsedUp()) return await super.waitForJob(blockTimeout)
    // null: "nothing now", and the worker loop claims again after the pause.
    await new Promise<void>((resolve) => {
      this.endPoll = () => { clearTimeout(this.pollTimer); this.endPoll = undefined; resolve() }
      this.pollTimer = setTimeout(this.endPoll, Math.min(FULL_QUEUE_POLL_MS, Math.max(blockTimeout, 0) * 1000))
    })
    return null
  }

  override async disconnectBlocking (wait = true): Promise<void> {
    this.endPoll?.()
    await super.disconnectBlocking(wait)
  }

  private async concurrencyUsedUp (): Promise<boolean> {
    try {
      const { rows } = await this.shared.pool.query<{ full: boolean }>(`
        select coalesce((select count(*) from job where queue = $1 and state = 'active')
                        >= (select value::integer from meta where queue = $1 and field = 'concurrency'), false) as full`, [this.queueName])
      return rows[0]?.full === true
    } catch {
      return false // BullMQ's own wait then finds out what is wrong
    }
  }
}

/** A LISTEN connection of the service's own, listened again after every reconnect. */
class Listener {
  private client: pg.Client | undefined
  private readonly handlers = new Map<string, { onMessage: (payload: string) => void, onGap?: () => void }>()
  private closed = false
  private connecting: Promise<void> | undefined
  private retryTimer: NodeJS.Timeout | undefined

  constructor (private readonly databaseUrl: string, private readonly log: Logger, private readonly name: string) {}

  async listen (channel: string, onMessage: (payload: string) => void, onGap?: () => void): Promise<void> {
    this.handlers.set(channel, { onMessage, onGap })
    await this.connect()
    await this.client?.query(`LISTEN ${pg.escapeIdentifier(channel)}`)
  }

  private async connect (): Promise<void> {
    if (this.client !== undefined) return
    this.connecting ??= this.open().finally(() => { this.connecting = undefined })
    await this.connecting
  }

  private async open (): Promise<void> {
    const client = new pg.Client({ connectionString: this.databaseUrl, application_name: this.name, keepAlive: true })
    client.on('notification', (n) => {
      if (n.payload !== undefined) this.handlers.get(n.channel)?.onMessage(n.payload)
    })
    const lost = (err?: Error): void => {
      if (this.client !== client) return
      this.client = undefined
      client.end().catch(() => {})
      if (this.closed) return
      this.log.warn({ err, listener: this.name }, 'PostgreSQL LISTEN connection lost, reconnecting')
      this.retry(200)
    }
    client.on('error', lost)
    client.on('end', () => { lost() })
    await client.connect()
    for (const channel of this.handlers.keys()) await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`)
    this.client = client
  }

  private retry (delayMs: number): void {
    clearTimeout(this.retryTimer)
    this.retryTimer = setTimeout(() => {
      if (this.closed) return
      this.connect().then(() => {
        // Notifications sent while no connection listened are gone.
        for (const { onGap } of this.handlers.values()) onGap?.()
      }, (err: unknown) => {
        this.log.warn({ err, listener: this.name }, 'PostgreSQL LISTEN connection failed, retrying')
        this.retry(Math.min(delayMs * 2, 2000))
      })
    }, delayMs)
    this.retryTimer.unref()
  }

  async close (): Promise<void> {
    this.closed = true
    clearTimeout(this.retryTimer)
    await this.connecting?.catch(() => {})
    const client = this.client
    this.client = undefined
    await client?.end().catch(() => {})
  }
}

/** Brings BullMQ's `bullmq` schema up to date (on one dedicated session, as its migrator requires). */
export async function migratePostgresQueues (databaseUrl: string): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    await runMigrations(client)
  } finally {
    await client.end()
  }
}

/**
 * BullMQ's pool, beside the process's own (DATABASE_POOL_SIZE): half its size
 * is plenty for adds and reads of jobs, and keeps a process at about 1.5 ×
 * DATABASE_POOL_SIZE + 4 connections (2 for the line numbers, 2 LISTEN).
 */
export function queuePoolSize (databasePoolSize: number): number {
  return Math.max(2, Math.ceil(databasePoolSize / 2))
}

/**
 * Queue bookkeeping commits without waiting for its WAL flush
 * (`synchronous_commit=off`): a crash of PostgreSQL loses at most its last
 * ~200 ms of it (wal_writer_delay), the durability of Redis with AOF every
 * second, and saves a disk flush on each of the four or five queue
 * transactions of a purchase. The purchases themselves, the truth, commit on
 * the process's own pool as before, and a 201 still means committed. A job
 * lost that way ends as a request never bought (404 on the status route),
 * and an applied job whose completion is lost is redelivered and answers its
 * recorded outcome.
 */
const QUEUE_SESSION_OPTIONS = '-c synchronous_commit=off'

export function openPostgresQueueBackend (config: Config, log: Logger, role: QueueBackendRole): QueueBackend {
  const prefix = config.queuePrefix
  const outcomesChannel = channelName(purchaseOutcomesChannel(prefix))
  const wakeupChannel = channelName(queueWakeupChannel(prefix))
  // BullMQ's tables: its pool, and (in a worker) its one LISTEN client for new jobs.
  // `migrate: true` brings its schema up to date at start (advisory-locked, once).
  const bullmq = new PostgresConnection({
    connectionString: config.databaseUrl,
    max: queuePoolSize(config.databasePoolSize),
    application_name: `${prefix}-${role}-queues`,
    connectionTimeoutMillis: 2000,
    options: QUEUE_SESSION_OPTIONS,
    migrate: true,
  })
  bullmq.on('error', (err: Error) => { log.warn({ err }, 'PostgreSQL queue connection error') })
  // The service's own registry and line numbers: two connections, bookkeeping like BullMQ's.
  // (The outcome notifications go with each batch's transaction, on the process's pool `db`.)
  const pool = new pg.Pool({ connectionString: config.databaseUrl, max: 2, connectionTimeoutMillis: 2000, application_name: `${prefix}-${role}-line`, options: QUEUE_SESSION_OPTIONS })
  pool.on('error', (err) => { log.warn({ err }, 'idle PostgreSQL client failed') })
  const listener = new Listener(config.databaseUrl, log, `${prefix}-${role}-listener`)
  const factory = (name: string, opts: QueueBaseOptions<PostgresConnectionOptions>): PostgresQueueBackend => new SharedConnectionBackend(bullmq, name, opts)
  // Every waiting Worker listens on the one shared client: no warning at 11 of them.
  let widened: pg.Client | undefined
  const widenListeners = (): void => {
    bullmq.getListenClient().then((client) => {
      const c = client as unknown as pg.Client
      if (c !== widened) { c.setMaxListeners(0); widened = c }
    }, () => {})
  }

  return {
    kind: 'postgres',
    storeName: 'PostgreSQL',
    // By age only: BullMQ's count-based retention there deletes with `id NOT IN (the newest N)`,
    // a scan of every finished job of the queue on each completion (measured: 11 ms of PostgreSQL
    // CPU per purchase). Five minutes keep a hot option's table small (300,000 rows at 1,000/s).
    retention: { removeOnComplete: { age: 300 }, removeOnFail: { age: 7 * 24 * 3600 } },

    // The `connection` option goes unused: the factory hands every backend the shared connection.
    // One job per request: an add of several is already one transaction here (addBulk), and a
    // request inside a bundle could be found only by a scan of the job table's JSON.
    bundles: false,
    recordBundle: async () => {},
    bundleOf: async () => null,
    forgetBundle: async () => {},
    // Every request goes through the queue: the lease's claim would have to read BullMQ's
    // job table and two line counters in one atomic step, which READ COMMITTED does not give.
    directPurchases: false,
    claimDirect: async () => null,
    releaseDirect: async () => {},
    directLeaseMs: async () => 0,

    createQueue: (name: string, settings: QueueSettings = {}) =>
      new Queue<any, any, string, any, any, string, PostgresQueueBackend, PostgresConnectionOptions>(name, { connection: config.databaseUrl, telemetry: queueTelemetry(), ...settings }, factory) as unknown as Queue,
    createWorker: (name: string, processor: Processor, settings: WorkerSettings) => {
      widenListeners()
      return new Worker<any, any, string, PostgresQueueBackend, any, PostgresConnectionOptions>(name, processor, { connection: config.databaseUrl, telemetry: queueTelemetry(), ...settings }, factory) as unknown as Worker
    },

    touchOption: async (ticketOptionId, now) => {
      await pool.query(`
        with touched as (
          insert into queue_active_options (ticket_option_id, last_used_at) values ($1, $2)
          on conflict (ticket_option_id) do update set last_used_at = greatest(queue_active_options.last_used_at, excluded.last_used_at)
        )
        select pg_notify($3, $1::text)`, [ticketOptionId, now, wakeupChannel])
    },
    listActiveOptions: async () => {
      const { rows } = await pool.query<{ ticket_option_id: string, last_used_at: string }>('select ticket_option_id, last_used_at from queue_active_options')
      return rows.map((r) => ({ ticketOptionId: r.ticket_option_id, lastUsedAt: Number(r.last_used_at) }))
    },
    recentOptions: async (limit) => {
      const { rows } = await pool.query<{ ticket_option_id: string, registered: string }>(
        'select ticket_option_id, count(*) over () as registered from queue_active_options order by last_used_at desc limit $1', [limit])
      return { registered: rows.length === 0 ? 0 : Number(rows[0]?.registered), ids: rows.map((r) => r.ticket_option_id) }
    },
    // Removed only if nobody touched it since `lastUsedAt` was read (as the Redis script does).
    releaseOption: async (ticketOptionId, lastUsedAt) => {
      const { rowCount } = await pool.query('delete from queue_active_options where ticket_option_id = $1 and last_used_at <= $2', [ticketOptionId, lastUsedAt])
      return rowCount === 1
    },
    subscribeWakeups: async (onWakeup) => { await listener.listen(wakeupChannel, onWakeup) },

    subscribeLineMessages: async (onMessage, onGap) => {
      await listener.listen(outcomesChannel, lineMessageReader(onMessage, log), onGap)
    },
    // One statement: the applied line number and the notifications, delivered only if the batch commits.
    recordApplied: async (client: DbClient, message) => {
      if (message.outcomes.length === 0) return
      await client.query(`
        with line as (
          insert into queue_line_applied (ticket_option_id, applied)
          select $1, $2 where $2::bigint is not null
          on conflict (ticket_option_id) do update set applied = greatest(queue_line_applied.applied, excluded.applied)
        )
        select pg_notify($3, payload) from unnest($4::text[]) with ordinality as p(payload, n) order by n`,
      [message.ticketOptionId, message.appliedLine, outcomesChannel, appliedPayloads(message)])
    },
    publishApplied: async () => {},
    publishApplying: async (ticketOptionId, applyingLine) => {
      await pool.query('select pg_notify($1, $2)', [outcomesChannel, JSON.stringify({ type: 'applying', ticketOptionId, applyingLine } satisfies ApplyingMessage)])
    },

    takeLineNumbers: async (ticketOptionId, count) => {
      const { rows } = await pool.query<{ taken: string }>(`
        insert into queue_line_taken (ticket_option_id, taken) values ($1, $2)
        on conflict (ticket_option_id) do update set taken = queue_line_taken.taken + excluded.taken
        returning taken`, [ticketOptionId, count])
      return { last: Number(rows[0]?.taken), unfencedLease: null }
    },
    markFenced: async () => {},
    readLine: async (ticketOptionId) => {
      const { rows } = await pool.query<{ taken: string | null, applied: string | null }>(`
        select (select taken from queue_line_taken where ticket_option_id = $1) as taken,
               (select applied from queue_line_applied where ticket_option_id = $1) as applied`, [ticketOptionId])
      return { taken: Number(rows[0]?.taken ?? 0), applied: Number(rows[0]?.applied ?? 0) }
    },

    // BullMQ's move_active_to_wait gives the job a new `seq`, the tail of the queue;
    // in the same transaction it is given one before every waiting job, the head.
    handBack: async (job, token) => {
      // BullMQ's pool: its sessions' search_path is the `bullmq` schema.
      await withTransaction(bullmq.pool as unknown as Db, async (client) => {
        const { rows } = await client.query<{ n: string }>('select move_active_to_wait($1, $2, $3, $4) as n', [job.queueName, job.id, token, Date.now()])
        if (Number(rows[0]?.n) < 0) throw new Error(`job ${job.id ?? '?'} is gone from ${job.queueName}`)
        await client.query(`
          update job set seq = (select coalesce(min(seq), 0) - 1 from job where queue = $1 and state = 'waiting' and id <> $2)
           where queue = $1 and id = $2 and state = 'waiting'`, [job.queueName, job.id])
      })
    },
    // One query each, on the partial index of waiting jobs; BullMQ's getJobs reads the ids,
    // then each job with a query of its own (100 per batch), and its getWaitingCount counts
    // every job of the queue, the finished ones too.
    waitingData: async (queue, limit) => {
      const { rows } = await pool.query<{ data: unknown }>(
        "select data from bullmq.job where queue = $1 and state = 'waiting' order by priority, seq limit $2", [queue.name, limit])
      return rows.map((r) => r.data)
    },
    waitingCount: async (queue) => {
      const { rows } = await pool.query<{ n: number }>("select count(*)::int as n from bullmq.job where queue = $1 and state = 'waiting'", [queue.name])
      return rows[0]?.n ?? 0
    },
    // BullMQ's move_active_to_wait and move_stalled_jobs_to_wait give the job a new
    // `seq`, the tail of the queue: look for it by line number in BullMQ's job table.
    olderWaiting: async (queue, line, limit) => {
      const { rows } = await pool.query<{ data: unknown }>(`
        select data from bullmq.job
         where queue = $1 and state = 'waiting' and (data->>'line')::bigint < $2
         order by (data->>'line')::bigint limit $3`, [queue.name, line, limit])
      return rows.map((r) => r.data)
    },

    // One query over BullMQ's job table for all the options, where getJobCounts would be one per queue.
    queueCounts: async (ticketOptionIds) => {
      if (ticketOptionIds.length === 0) return []
      const names = ticketOptionIds.map(purchaseQueueName)
      const { rows } = await pool.query<{ queue: string, waiting: string, active: string, delayed: string }>(`
        select queue,
               count(*) filter (where state = 'waiting') as waiting,
               count(*) filter (where state = 'active') as active,
               count(*) filter (where state = 'delayed') as delayed
          from bullmq.job where queue = any($1::text[]) and state in ('waiting', 'active', 'delayed')
         group by queue`, [names])
      const byQueue = new Map(rows.map((r) => [r.queue, { waiting: Number(r.waiting), active: Number(r.active), delayed: Number(r.delayed) }]))
      return names.map((name): QueueCounts => byQueue.get(name) ?? { waiting: 0, active: 0, delayed: 0 })
    },

    answers: async (timeoutMs) => await postgresAnswers(pool, timeoutMs),
    // Refused before any query was sent: nothing can have been added.
    neverSent: (err) => {
      const e = err as { code?: string, message?: string } | null
      return e?.code === 'ECONNREFUSED' || /timeout exceeded when trying to connect/i.test(e?.message ?? '')
    },
    // PostgreSQL keeps its data across a restart: nothing to set up again.
    onReconnect: () => {},
    waitUntilReady: async (timeoutMs) => {
      let timer: NodeJS.Timeout | undefined
      try {
        await Promise.race([
          bullmq.waitUntilReady(),
          new Promise<never>((_resolve, reject) => { timer = setTimeout(() => { reject(new Error(`PostgreSQL queues not ready after ${timeoutMs} ms`)) }, timeoutMs) }),
        ])
      } finally {
        clearTimeout(timer)
      }
    },
    close: async () => {
      await listener.close()
      await bullmq.close()
      await pool.end()
    },
  }
}
