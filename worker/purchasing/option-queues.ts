/**
 * Finds the option queues that have work and runs one BullMQ Worker for each.
 *
 * The API registers an option (the queue backend's registry) before it enqueues
 * and sends a wake-up. This module subscribes to wake-ups and also rescans the registry every
 * few seconds, so a missed message only delays a job and never strands it.
 * A queue idle for WORKER_QUEUE_IDLE_MS is let go (its Worker closed, and its
 * registration removed once the queue is empty), so connections stay bounded
 * by the options in use, not by the options that exist.
 *
 * Serialization across replicas is BullMQ's queue-level global concurrency of 1.
 * @see https://docs.bullmq.io/guide/queues/global-concurrency
 */
import os from 'node:os'
import type { Queue, Worker } from 'bullmq'
import type { Logger } from 'pino'
import type { Config } from '../../shared/config'
import type { Db } from '../../shared/db'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import type { WorkerMetrics } from '../monitoring/metrics'
import { GroupCommit } from '../../shared/purchases/group-commit'
import { createPurchaseProcessor, RecentOutcomes } from './purchase-processor'

/**
 * Lock and stall settings for short jobs: a worker killed mid-job holds its
 * option for at most LOCK_DURATION_MS + STALLED_INTERVAL_MS before another
 * worker moves the job back to wait (DESIGN.md: at-least-once, never twice).
 * The lock is renewed every LOCK_DURATION_MS / 2, so one late renewal under
 * load never loses it. The stall check runs once per interval per queue
 * (shared by all workers), so 2 s costs one small script per queue every 2 s;
 * with 3 s test/faults/worker-sigkill.test.ts measured stalls up to 8.1 s
 * under load, too close to the 10 s target.
 */
export const LOCK_DURATION_MS = 5000
/**
 * Stored by BullMQ on every job this process takes (`processedBy`), so the
 * dashboard, an operator or a test can tell which replica holds an option's
 * job: host name (the container id under compose) and pid.
 */
export const WORKER_NAME = `${os.hostname()}:${process.pid}`

export const STALLED_INTERVAL_MS = 2000

interface RunningQueue {
  worker: Worker
  queue: Queue
  lastActiveAt: number
}

export interface OptionQueuesDeps {
  config: Config
  db: Db
  /** the queues, the registry, wake-ups and outcome messages */
  backend: QueueBackend
  log: Logger
  /** batch timings and sizes for the worker's GET /metrics */
  metrics?: WorkerMetrics
}

export class OptionQueues {
  private readonly running = new Map<string, RunningQueue>()
  private readonly recent = new RecentOutcomes()
  /** Every option's batches share transactions with the others ready at the same moment; half the pool at most. */
  private readonly transactions: GroupCommit
  private rescanTimer: NodeJS.Timeout | undefined
  private rescanning: Promise<void> | undefined
  private closing = false

  constructor (private readonly deps: OptionQueuesDeps) {
    this.transactions = new GroupCommit(deps.db, Math.max(1, Math.floor(deps.config.databasePoolSize / 2)))
  }

  /** Option ids this process currently runs a Worker for. */
  get activeOptionIds (): string[] {
    return [...this.running.keys()]
  }

  async start (): Promise<void> {
    const { backend, config, log } = this.deps
    // The rescan finds queues too, so a lost wake-up only delays a job.
    await backend.subscribeWakeups((ticketOptionId) => { this.ensure(ticketOptionId) })
    // A Redis restarted without its data (no AOF) forgets each queue's global
    // concurrency: set it again on every reconnect so options stay serial across replicas.
    backend.onReconnect(() => {
      for (const [ticketOptionId, { queue }] of this.running) {
        queue.setGlobalConcurrency(1).catch((err: unknown) => { log.warn({ err, ticketOptionId }, 'could not set global concurrency') })
      }
    })
    await this.rescan()
    this.rescanTimer = setInterval(() => {
      this.rescan().catch((err: unknown) => { log.warn({ err }, 'rescan of option queues failed') })
    }, config.workerRescanMs)
  }

  /** Looks at every registered option: runs the active ones, lets idle ones go. */
  async rescan (): Promise<void> {
    // One rescan at a time; a timer tick during a slow one joins it.
    this.rescanning ??= this.rescanOnce().finally(() => { this.rescanning = undefined })
    await this.rescanning
  }

  private async rescanOnce (): Promise<void> {
    if (this.closing) return
    const { backend, config } = this.deps
    const now = Date.now()
    const registered = await backend.listActiveOptions()
    const wanted = new Set<string>()
    for (const { ticketOptionId, lastUsedAt } of registered) {
      if (now - lastUsedAt < config.workerQueueIdleMs || await this.hasJobs(ticketOptionId)) {
        wanted.add(ticketOptionId)
        this.ensure(ticketOptionId)
      } else {
        await backend.releaseOption(ticketOptionId, lastUsedAt)
      }
    }
    for (const [ticketOptionId, entry] of this.running) {
      if (!wanted.has(ticketOptionId) && now - entry.lastActiveAt >= config.workerQueueIdleMs) await this.stop(ticketOptionId)
    }
  }

  private async hasJobs (ticketOptionId: string): Promise<boolean> {
    const entry = this.running.get(ticketOptionId)
    const queue = entry?.queue ?? this.newQueue(ticketOptionId)
    try {
      const counts = await queue.getJobCounts('wait', 'active', 'delayed', 'prioritized')
      return Object.values(counts).some((n) => n > 0)
    } finally {
      if (entry === undefined) await queue.close()
    }
  }

  private newQueue (ticketOptionId: string): Queue {
    const queue = this.deps.backend.createQueue(purchaseQueueName(ticketOptionId))
    queue.on('error', (err) => { this.deps.log.warn({ err, ticketOptionId }, 'queue error') })
    return queue
  }

  /** Starts a Worker for the option's queue unless one runs already. */
  ensure (ticketOptionId: string): void {
    if (this.closing) return
    const existing = this.running.get(ticketOptionId)
    if (existing !== undefined) {
      existing.lastActiveAt = Date.now()
      return
    }
    const { config, db, backend, log } = this.deps
    const queueLog = log.child({ ticketOptionId })
    const queue = this.newQueue(ticketOptionId)
    const processor = createPurchaseProcessor(queue, {
      db,
      transactions: this.transactions,
      backend,
      batchSize: config.workerBatchSize,
      dbRetryMs: config.workerDbRetryMs,
      log: queueLog,
      isClosing: () => this.closing,
      recent: this.recent,
      metrics: this.deps.metrics,
    })
    const worker = backend.createWorker(purchaseQueueName(ticketOptionId), processor, {
      name: WORKER_NAME,
      concurrency: 1,
      lockDuration: LOCK_DURATION_MS,
      stalledInterval: STALLED_INTERVAL_MS,
      // A purchase job is idempotent, so a job that stalls again is retried rather than failed.
      maxStalledCount: 10,
      ...backend.retention,
    })
    const entry: RunningQueue = { worker, queue, lastActiveAt: Date.now() }
    worker.on('error', (err) => { queueLog.warn({ err }, 'worker error') })
    worker.on('failed', (job, err) => {
      // reqId (from the job data, when it has one) ties the failure to the API's request log line.
      const requestId: unknown = (job?.data as { requestId?: unknown } | undefined)?.requestId
      queueLog.error({ err, jobId: job?.id, reqId: typeof requestId === 'string' ? requestId : undefined, attemptsMade: job?.attemptsMade }, 'purchase job failed')
    })
    worker.on('completed', () => { entry.lastActiveAt = Date.now() })
    this.running.set(ticketOptionId, entry)
    // Set by the API too; repeated here so an option's queue is serial even if an older API enqueued into it.
    queue.setGlobalConcurrency(1).catch((err: unknown) => { queueLog.warn({ err }, 'could not set global concurrency') })
    queueLog.info({ queue: purchaseQueueName(ticketOptionId), jobName: PURCHASE_JOB_NAME }, 'serving option queue')
  }

  private async stop (ticketOptionId: string): Promise<void> {
    const entry = this.running.get(ticketOptionId)
    if (entry === undefined) return
    this.running.delete(ticketOptionId)
    await entry.worker.close()
    await entry.queue.close()
    this.deps.log.info({ ticketOptionId }, 'let idle option queue go')
  }

  /** Stops taking jobs, lets the purchase being applied finish, and closes every Worker. */
  async close (): Promise<void> {
    this.closing = true
    clearInterval(this.rescanTimer)
    await this.rescanning?.catch(() => {})
    const entries = [...this.running.values()]
    this.running.clear()
    await Promise.all(entries.map(async ({ worker, queue }) => {
      await worker.close()
      await queue.close()
    }))
  }
}
