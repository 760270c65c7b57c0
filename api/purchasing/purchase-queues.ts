/**
 * The API's side of the per-option queues: adds purchase jobs, registers the
 * option as active and wakes the workers. All queues share one fail-fast
 * Redis connection, so the API's connections do not grow with the options;
 * Queue objects are kept in a bounded LRU.
 */
import { Queue } from 'bullmq'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import { jobIdOf, type SaleRequest } from '../../shared/purchases/sale-request'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import { touchOption } from '../../shared/queues/queue-registry'

// Touching the registry more often than this per option only repeats work;
// it must stay far below WORKER_QUEUE_IDLE_MS so a registration never lapses while in use.
const TOUCH_INTERVAL_MS = 1000

interface OpenQueue {
  queue: Queue
  /** setGlobalConcurrency(1) done; every add waits for it */
  ready: Promise<void>
  touchedAt: number
}

export type JobState = 'pending' | 'unknown'

export class PurchaseQueues {
  private readonly open = new Map<string, OpenQueue>()

  constructor (
    private readonly redis: Redis,
    private readonly prefix: string,
    private readonly log: Logger,
    private readonly maxOpen = 1000
  ) {
    // A Redis restarted without its data (no AOF) forgets each queue's global
    // concurrency and the registry: set them again on every reconnect, before
    // the next add (enqueue awaits `ready`), so options stay serial across workers.
    redis.on('ready', () => { this.setUpAgain() })
  }

  private setUpAgain (): void {
    for (const [ticketOptionId, entry] of this.open) {
      entry.touchedAt = 0
      entry.ready = entry.queue.setGlobalConcurrency(1).then(() => {})
      entry.ready.catch(() => { if (this.open.get(ticketOptionId) === entry) this.open.delete(ticketOptionId) })
    }
  }

  private get (ticketOptionId: string): OpenQueue {
    let entry = this.open.get(ticketOptionId)
    if (entry !== undefined) {
      // Map keeps insertion order: re-inserting makes this the most recent.
      this.open.delete(ticketOptionId)
      this.open.set(ticketOptionId, entry)
      return entry
    }
    const queue = new Queue(purchaseQueueName(ticketOptionId), {
      connection: this.redis,
      prefix: this.prefix,
      skipWaitingForReady: true,
      defaultJobOptions: {
        // Infrastructure failures are retried; the worker first retries in place for a while.
        attempts: 100,
        backoff: { type: 'fixed', delay: 2000 },
        removeOnComplete: { age: 3600, count: 10_000 },
        removeOnFail: { age: 7 * 24 * 3600 },
      },
    })
    queue.on('error', (err) => { this.log.warn({ err, ticketOptionId }, 'queue error') })
    const ready = queue.setGlobalConcurrency(1).then(() => {})
    entry = { queue, ready, touchedAt: 0 }
    // A failed set-up is retried on the next request instead of being cached.
    ready.catch(() => { if (this.open.get(ticketOptionId) === entry) this.open.delete(ticketOptionId) })
    this.open.set(ticketOptionId, entry)
    if (this.open.size > this.maxOpen) {
      const [oldestId, oldest] = this.open.entries().next().value as [string, OpenQueue]
      this.open.delete(oldestId)
      oldest.queue.close().catch(() => {})
    }
    return entry
  }

  /** Adds the request's job (job id: `jobIdOf`, so adding it twice queues it once). Throws when Redis is unavailable. */
  async enqueue (data: SaleRequest): Promise<void> {
    const entry = this.get(data.ticketOptionId)
    await entry.ready
    const now = Date.now()
    if (now - entry.touchedAt >= TOUCH_INTERVAL_MS) {
      await touchOption(this.redis, this.prefix, data.ticketOptionId, now)
      entry.touchedAt = now
    }
    await entry.queue.add(PURCHASE_JOB_NAME, data, { jobId: jobIdOf(data) })
  }

  /** Jobs of the option waiting for their turn (BullMQ's waiting count: one round trip). */
  async waitingCount (ticketOptionId: string): Promise<number> {
    return await this.get(ticketOptionId).queue.getWaitingCount()
  }

  /** Whether a job (a purchase's id, or another request's `jobIdOf`) is still waiting or being applied. */
  async jobState (ticketOptionId: string, jobId: string): Promise<JobState> {
    const state = await this.get(ticketOptionId).queue.getJobState(jobId)
    return state === 'unknown' || state === 'completed' || state === 'failed' ? 'unknown' : 'pending'
  }

  /**
   * A job still waiting or being applied, with its number in the option's
   * line (absent for a job of older code); null when it is not pending. One
   * read of the job's hash.
   */
  async pendingJob (ticketOptionId: string, jobId: string): Promise<{ line: number | null } | null> {
    const job = await this.get(ticketOptionId).queue.getJob(jobId)
    if (job === undefined || job.finishedOn !== undefined) return null
    const line: unknown = (job.data as { line?: unknown } | undefined)?.line
    return { line: typeof line === 'number' ? line : null }
  }

  async close (): Promise<void> {
    const queues = [...this.open.values()]
    this.open.clear()
    await Promise.all(queues.map(async ({ queue }) => { await queue.close() }))
  }
}
