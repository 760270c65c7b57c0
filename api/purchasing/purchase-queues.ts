/**
 * The API's side of the per-option queues: adds purchase jobs, registers the
 * option as active and wakes the workers. All queues share the queue
 * backend's fail-fast connection, so the API's connections do not grow with
 * the options; Queue objects are kept in a bounded LRU.
 */
import type { Job, Queue } from 'bullmq'
import type { Logger } from 'pino'
import { bundleJobIdOf, jobIdOf, requestsOfJob, type SaleBundle, type SaleRequest } from '../../shared/purchases/sale-request'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import { currentTraceContext } from '../../shared/telemetry/purchase-spans'
import { BatchedCalls } from './batched-calls'

/**
 * Most requests one bundle job carries; more gathered at once go as several
 * bundles in one addBulk. Bounds a job's size and the batch a worker takes
 * with it (a batch holds at least its head job whole).
 */
export const BUNDLE_MAX_REQUESTS = 100

// Touching the registry more often than this per option only repeats work;
// it must stay far below WORKER_QUEUE_IDLE_MS so a registration never lapses while in use.
const TOUCH_INTERVAL_MS = 1000

interface OpenQueue {
  queue: Queue
  /** setGlobalConcurrency(1) done; every add waits for it */
  ready: Promise<void>
  touchedAt: number
  /** the registry touch in flight, shared by the requests that need it */
  touching: Promise<void> | null
}

export type JobState = 'pending' | 'unknown'

/**
 * A job's options: its id (`jobIdOf`, or a bundle's `bundleJobIdOf`: adding
 * it twice queues it once) and, when traced, its (first) request's trace
 * context for BullMQ's telemetry: in a bulk each job keeps its request's
 * trace instead of the bulk's.
 */
function jobOptions (jobId: string, first: SaleRequest): { jobId: string, telemetry?: { metadata: string } } {
  return first.traceContext === undefined ? { jobId } : { jobId, telemetry: { metadata: first.traceContext } }
}

export class PurchaseQueues {
  private readonly open = new Map<string, OpenQueue>()

  constructor (
    private readonly backend: QueueBackend,
    private readonly log: Logger,
    private readonly maxOpen = 1000
  ) {
    // A Redis restarted without its data (no AOF) forgets each queue's global
    // concurrency and the registry: set them again on every reconnect, before
    // the next add (enqueue awaits `ready`), so options stay serial across workers.
    backend.onReconnect(() => { this.setUpAgain() })
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
    const queue = this.backend.createQueue(purchaseQueueName(ticketOptionId), {
      skipWaitingForReady: true,
      defaultJobOptions: {
        // Infrastructure failures are retried; the worker first retries in place for a while.
        attempts: 100,
        backoff: { type: 'fixed', delay: 2000 },
        ...this.backend.retention,
      },
    })
    queue.on('error', (err) => { this.log.warn({ err, ticketOptionId }, 'queue error') })
    const ready = queue.setGlobalConcurrency(1).then(() => {})
    entry = { queue, ready, touchedAt: 0, touching: null }
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

  /** Adds the request's job (job id: `jobIdOf`, so adding it twice queues it once). Throws when the queue store is unavailable. */
  async enqueue (data: SaleRequest): Promise<void> {
    const entry = this.get(data.ticketOptionId)
    await entry.ready
    await this.touch(entry, data.ticketOptionId)
    // Tracing on: the job carries this request's trace context, so the worker's spans join its trace.
    const traceContext = currentTraceContext()
    await this.add(entry, traceContext === undefined ? data : { ...data, traceContext })
  }

  /**
   * Adds requests that already hold their line numbers (a direct batch that
   * failed, direct-sales.ts) at the head of their option's queue, as one job
   * (a bundle when several, on Redis), so a worker takes them before the jobs
   * that queued behind them. Not gathered with other adds: those go to the tail.
   */
  async enqueueAhead (requests: readonly SaleRequest[]): Promise<void> {
    const [first] = requests
    if (first === undefined) return
    const entry = this.get(first.ticketOptionId)
    await entry.ready
    await this.touch(entry, first.ticketOptionId)
    const { queue } = entry
    if (requests.length === 1) {
      await queue.add(PURCHASE_JOB_NAME, first, { ...jobOptions(jobIdOf(first), first), lifo: true })
    } else if (this.backend.bundles) {
      const bundleId = bundleJobIdOf(requests)
      await Promise.all([
        this.backend.recordBundle(first.ticketOptionId, bundleId, requests.map(jobIdOf)),
        queue.add(PURCHASE_JOB_NAME, { kind: 'bundle', requests: [...requests] } satisfies SaleBundle, { ...jobOptions(bundleId, first), lifo: true }),
      ])
    } else {
      // Each to the head: the last first, so the first ends up in front.
      for (const request of [...requests].reverse()) await queue.add(PURCHASE_JOB_NAME, request, { ...jobOptions(jobIdOf(request), request), lifo: true })
    }
  }

  /** Registers the option at most once a second; requests meanwhile wait for the touch in flight instead of each sending one. */
  private async touch (entry: OpenQueue, ticketOptionId: string): Promise<void> {
    if (entry.touching !== null) return await entry.touching
    const now = Date.now()
    if (now - entry.touchedAt < TOUCH_INTERVAL_MS) return
    const touching = this.backend.touchOption(ticketOptionId, now).then(() => { entry.touchedAt = now })
    entry.touching = touching
    try {
      await touching
    } finally {
      entry.touching = null
    }
  }

  /**
   * One add per option in flight; requests that come meanwhile go together,
   * in the order they asked (batched-calls.ts), in one round trip: on Redis
   * as bundles of up to BUNDLE_MAX_REQUESTS requests, one job each (the queue's
   * per-job work, about 40 Redis commands, is paid per bundle, not per buyer),
   * each request findable by its own id through the bundle index; on
   * PostgreSQL as one `addBulk` of one job each (one transaction and one
   * notification of the workers). The queue holds them in line order on
   * both. All of a call are added or none: a failure reaches each of them.
   */
  private readonly adds = new BatchedCalls<{ queue: Queue, data: SaleRequest }, undefined>(async (ticketOptionId, requests) => {
    const [first] = requests
    if (first === undefined) return []
    if (requests.length === 1) {
      await first.queue.add(PURCHASE_JOB_NAME, first.data, jobOptions(jobIdOf(first.data), first.data))
    } else if (!this.backend.bundles) {
      await first.queue.addBulk(requests.map(({ data }) => ({ name: PURCHASE_JOB_NAME, data, opts: jobOptions(jobIdOf(data), data) })))
    } else {
      const bundles: SaleRequest[][] = []
      for (let i = 0; i < requests.length; i += BUNDLE_MAX_REQUESTS) bundles.push(requests.slice(i, i + BUNDLE_MAX_REQUESTS).map((r) => r.data))
      // Sent together: the index and the jobs go out in one round trip.
      await Promise.all([
        ...bundles.map(async (members) => { await this.backend.recordBundle(ticketOptionId, bundleJobIdOf(members), members.map(jobIdOf)) }),
        first.queue.addBulk(bundles.map((members) => ({ name: PURCHASE_JOB_NAME, data: { kind: 'bundle', requests: members } satisfies SaleBundle, opts: jobOptions(bundleJobIdOf(members), members[0] as SaleRequest) }))),
      ])
    }
    return requests.map(() => undefined)
  })

  private async add (entry: OpenQueue, data: SaleRequest): Promise<void> {
    await this.adds.call(data.ticketOptionId, { queue: entry.queue, data })
  }

  /** Requests of the option waiting for their turn (one round trip; see the backend's waitingCount). */
  async waitingCount (ticketOptionId: string): Promise<number> {
    return await this.backend.waitingCount(this.get(ticketOptionId).queue, ticketOptionId)
  }

  /**
   * The job that carries a request (a purchase's id, or another request's
   * `jobIdOf`): its own, or the bundle the index names; undefined when none.
   */
  private async jobOf (ticketOptionId: string, jobId: string): Promise<Job | undefined> {
    const { queue } = this.get(ticketOptionId)
    const own = await queue.getJob(jobId)
    if (own !== undefined || !this.backend.bundles) return own
    const bundleId = await this.backend.bundleOf(ticketOptionId, jobId)
    return bundleId === null ? undefined : await queue.getJob(bundleId)
  }

  /** Whether a request (a purchase's id, or another request's `jobIdOf`) is still waiting or being applied. */
  async jobState (ticketOptionId: string, jobId: string): Promise<JobState> {
    return await this.pendingJob(ticketOptionId, jobId) === null ? 'unknown' : 'pending'
  }

  /**
   * A request still waiting or being applied, with its number in the
   * option's line (absent for a job of older code); null when it is not
   * pending. One read of its job's hash (two when it waits in a bundle).
   */
  async pendingJob (ticketOptionId: string, jobId: string): Promise<{ line: number | null } | null> {
    const job = await this.jobOf(ticketOptionId, jobId)
    if (job === undefined || job.finishedOn !== undefined) return null
    const request = requestsOfJob(job.data)?.find((r) => jobIdOf(r) === jobId)
    const line: unknown = request?.line ?? (job.data as { line?: unknown } | undefined)?.line
    return { line: typeof line === 'number' ? line : null }
  }

  /** True when a failed enqueue certainly queued nothing (the store refused before the add was sent). */
  neverSent (err: unknown): boolean {
    return this.backend.neverSent(err)
  }

  async close (): Promise<void> {
    const queues = [...this.open.values()]
    this.open.clear()
    await Promise.all(queues.map(async ({ queue }) => { await queue.close() }))
  }
}
