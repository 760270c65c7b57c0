/**
 * The interface every queue backend implements (shared/queues/queue-backend.ts
 * chooses one). A file of its own so that the backends and the chooser import
 * it without importing each other.
 */
import type { Job, Processor, Queue, Worker } from 'bullmq'
import type { Config } from '../config'
import type { DbClient } from '../db'
import type { AppliedMessage, LineMessage } from '../purchases/purchase-outcomes'
import type { PutOffRelease, TakenLine } from './direct-lease'

export type QueueBackendKind = Config['queueBackend']

/** Who opens the backend: the API fails fast while a store is down; a worker waits and reconnects. */
export type QueueBackendRole = 'api' | 'worker'

export interface ActiveOption {
  ticketOptionId: string
  /** ms since epoch */
  lastUsedAt: number
}

export interface QueueCounts {
  waiting: number
  active: number
  delayed: number
}

/** Options of a Queue the service opens; the connection is the backend's own. */
export interface QueueSettings {
  defaultJobOptions?: Queue['defaultJobOptions']
  /** fail at once instead of waiting for the store to be ready (the API's producers) */
  skipWaitingForReady?: boolean
}

/** Options of a Worker the service opens; the connection is the backend's own. */
export interface WorkerSettings {
  name: string
  concurrency: number
  lockDuration: number
  stalledInterval: number
  maxStalledCount: number
  removeOnComplete: { age: number, count?: number }
  removeOnFail: { age: number, count?: number }
}

/** How long finished jobs stay in their queue (for the dashboard, and so a re-added job id is ignored). */
export interface JobRetention {
  removeOnComplete: { age: number, count?: number }
  removeOnFail: { age: number, count?: number }
}

export interface QueueBackend {
  readonly kind: QueueBackendKind
  /** The store the queues are in, as an operator names it: "Redis" or "PostgreSQL". */
  readonly storeName: string
  /** What the queues and workers keep of finished jobs on this store. */
  readonly retention: JobRetention

  /**
   * Whether an API puts the requests of an option it gathered while an add
   * was in flight into one job (a bundle, shared/purchases/sale-request.ts)
   * instead of one job each.
   */
  readonly bundles: boolean
  /** Records which bundle job holds each of these requests (one round trip; sent beside the add). */
  recordBundle: (ticketOptionId: string, bundleJobId: string, memberIds: readonly string[]) => Promise<void>
  /** The job id of the bundle that holds the request `memberId`; null when none does. */
  bundleOf: (ticketOptionId: string, memberId: string) => Promise<string | null>
  /** Forgets the members of a bundle that has been applied. */
  forgetBundle: (ticketOptionId: string, memberIds: readonly string[]) => Promise<void>

  /**
   * Whether an API may apply a batch of an idle option itself, under the
   * option's direct lease (api/purchasing/direct-sales.ts), instead of
   * queueing it. The three calls below do nothing useful when false.
   */
  readonly directPurchases: boolean
  /**
   * Takes the option's direct lease for `leaseMs` and `count` consecutive
   * line numbers, when nothing of the option waits, runs or is delayed in its
   * queue and nobody holds the lease; the first number, or null (not now).
   * `release`: a batch's release put off until now, done first (as releaseDirect without outcomes).
   */
  claimDirect: (ticketOptionId: string, count: number, leaseMs: number, token: string, release?: PutOffRelease) => Promise<number | null>
  /**
   * Drops the lease if `token` still holds it. With `appliedLine` (its batch
   * committed) also advances the applied line; one round trip. The outcomes
   * are published apart (publishApplied).
   */
  releaseDirect: (ticketOptionId: string, token: string, appliedLine: number | null) => Promise<void>
  /** How long the option's direct lease still lives (ms); 0 when nobody holds it. */
  directLeaseMs: (ticketOptionId: string) => Promise<number>

  createQueue: (name: string, settings?: QueueSettings) => Queue
  createWorker: (name: string, processor: Processor, settings: WorkerSettings) => Worker

  /** Marks an option as having work and wakes the workers up. */
  touchOption: (ticketOptionId: string, now: number) => Promise<void>
  /** Every registered option with the time it was last used. */
  listActiveOptions: () => Promise<ActiveOption[]>
  /** The `limit` most recently used options, most recent first, and how many are registered. */
  recentOptions: (limit: number) => Promise<{ registered: number, ids: string[] }>
  /** Unregisters an idle option, unless it was touched after `lastUsedAt`; false then. */
  releaseOption: (ticketOptionId: string, lastUsedAt: number) => Promise<boolean>
  /** Calls `onWakeup` with the option id whenever an API enqueues for it (best effort: workers rescan too). */
  subscribeWakeups: (onWakeup: (ticketOptionId: string) => void) => Promise<void>

  /**
   * Calls `onMessage` for every outcome message of every option, and
   * `onGap` whenever messages may have been missed (a reconnect).
   */
  subscribeLineMessages: (onMessage: (message: LineMessage) => void, onGap: () => void) => Promise<void>
  /** Inside the transaction that applies a batch: what must commit with it (the PostgreSQL backend's notification). */
  recordApplied: (client: DbClient, message: Omit<AppliedMessage, 'type'>) => Promise<void>
  /**
   * After that transaction committed: what is sent once it has (the Redis
   * backend's publish; in an API alone on the channel, only its own
   * listener is told, in-process: line-listeners.ts).
   */
  publishApplied: (message: Omit<AppliedMessage, 'type'>) => Promise<void>
  /** A batch has started (best effort). */
  publishApplying: (ticketOptionId: string, applyingLine: number) => Promise<void>

  /**
   * Takes `count` consecutive line numbers of the option: the last, and the
   * token of a direct lease whose fence the requests must raise before they
   * are added (api/purchasing/direct-fences.ts; always null without direct purchases).
   */
  takeLineNumbers: (ticketOptionId: string, count: number) => Promise<TakenLine>
  /** The fence of the option's direct lease `token` is up: later takes need not raise it (until the lease ends). */
  markFenced: (ticketOptionId: string, token: string) => Promise<void>
  /** The option's last line number taken and last applied (0 when none). */
  readLine: (ticketOptionId: string) => Promise<{ taken: number, applied: number }>

  /**
   * Gives an active job back to the head of its queue, to be taken again
   * before the jobs behind it (a worker that cannot apply it now).
   */
  handBack: (job: Job, token: string) => Promise<void>
  /** The data of the first `limit` jobs waiting in `queue`, in the order they will be taken. */
  waitingData: (queue: Queue, limit: number) => Promise<unknown[]>
  /** How many requests wait in the option's queue, `queue` (for backpressure: read often, so one cheap read). */
  waitingCount: (queue: Queue, ticketOptionId: string) => Promise<number>
  /**
   * The data of jobs waiting in `queue` whose line number is below `line`,
   * lowest first (at most `limit`): requests that arrived before the job
   * being applied but wait behind it. BullMQ on Redis puts a job handed back
   * or recovered after a stall at the head of its queue, so there are none;
   * on PostgreSQL it puts it at the tail, so the worker must look.
   */
  olderWaiting: (queue: Queue, line: number, limit: number) => Promise<unknown[]>

  /** Waiting, active and delayed jobs of each option's queue, in the order given. */
  queueCounts: (ticketOptionIds: string[]) => Promise<QueueCounts[]>

  /** Whether the store answers now, within `timeoutMs`. */
  answers: (timeoutMs: number) => Promise<boolean>
  /** True when a failed add certainly never reached the store (nothing can have been queued). */
  neverSent: (err: unknown) => boolean
  /** Runs `fn` after each reconnect to a store that may have lost its data (Redis without AOF). */
  onReconnect: (fn: () => void) => void
  /** Resolves once the store can be used, or rejects after `timeoutMs`. */
  waitUntilReady: (timeoutMs: number) => Promise<void>
  close: () => Promise<void>
}
