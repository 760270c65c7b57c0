/**
 * The worker's Prometheus metrics, served at GET /metrics on its small HTTP
 * server (worker/monitoring/health-server.ts, WORKER_HEALTH_PORT). One Registry per
 * worker, not prom-client's global one, so tests that start several workers
 * in one process do not collide. Instruments are updated in memory; the one
 * call a scrape makes is the readiness check behind `dependency_up`.
 * Keep in sync with README.md "Metrics".
 * @see https://github.com/siimon/prom-client
 */
import { Counter, Histogram, Registry } from 'prom-client'
import type { Db } from '../../shared/db'
import { registerDependencyGauge } from '../../shared/dependency-gauge'
import { collectProcessMetrics } from '../../shared/process-metrics'
import type { QueueStore } from '../../shared/health-checks'

/** Seconds; a batch transaction takes a few ms, a slow one under load some hundreds. */
const APPLY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
/** Options with a series of their own in worker_enqueue_to_outcome_seconds. */
export const OPTION_LABELS = 20

/** Purchases per batch, up to the largest WORKER_BATCH_SIZE people use. */
const BATCH_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]

export class WorkerMetrics {
  readonly registry = new Registry()

  /** The transaction that applies one batch (lock the option, write purchases and tickets, commit). */
  readonly batchApplySeconds = new Histogram({
    name: 'worker_purchase_batch_apply_seconds',
    help: 'Duration of the PostgreSQL transaction that applies one batch of purchases (committed batches only)',
    buckets: APPLY_BUCKETS,
    registers: [this.registry],
  })

  readonly batchSize = new Histogram({
    name: 'worker_purchase_batch_size',
    help: 'Purchases applied in one transaction',
    buckets: BATCH_BUCKETS,
    registers: [this.registry],
  })

  /** Outcomes decided in those transactions (a redelivered job reports its recorded outcome again). */
  readonly purchasesApplied = new Counter({
    name: 'worker_purchases_applied_total',
    help: 'Purchase outcomes returned by batch transactions, by status',
    labelNames: ['status'] as const,
    registers: [this.registry],
  })

  readonly batchFailures = new Counter({
    name: 'worker_purchase_batch_failures_total',
    help: 'Batch transactions that failed (each retry counts)',
    registers: [this.registry],
  })

  /** Labelled by option for the most recently active ones only, so the label set stays bounded. */
  readonly enqueueToOutcome = new Histogram({
    name: 'worker_enqueue_to_outcome_seconds',
    help: `Time from the API enqueueing a request to its batch committing, by option (the ${OPTION_LABELS} most recently active; an older series is removed)`,
    labelNames: ['ticket_option_id'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  })

  /** Option ids with a series of their own, least recently used first. */
  private readonly labelled = new Map<string, true>()

  constructor () {
    collectProcessMetrics(this.registry)
  }

  /** Starts reporting `dependency_up`, checked on each scrape. */
  watchDependencies (db: Db, queues: QueueStore): void {
    registerDependencyGauge(this.registry, db, queues)
  }

  /** A committed batch's requests: seconds from each one's enqueue to now. */
  requestsDecided (ticketOptionId: string, enqueuedAt: readonly number[], now = Date.now()): void {
    const label = this.labelFor(ticketOptionId)
    for (const at of enqueuedAt) this.enqueueToOutcome.observe({ ticket_option_id: label }, Math.max(0, now - at) / 1000)
  }

  private labelFor (ticketOptionId: string): string {
    if (this.labelled.has(ticketOptionId)) {
      this.labelled.delete(ticketOptionId)
      this.labelled.set(ticketOptionId, true)
      return ticketOptionId
    }
    if (this.labelled.size >= OPTION_LABELS) {
      const oldest = this.labelled.keys().next().value as string
      this.labelled.delete(oldest)
      // Its series goes with it: label values stay bounded however many options sell.
      this.enqueueToOutcome.remove({ ticket_option_id: oldest })
    }
    this.labelled.set(ticketOptionId, true)
    return ticketOptionId
  }

  /** Records one committed batch: its duration (seconds) and its outcomes. */
  batchApplied (seconds: number, statuses: readonly string[]): void {
    this.batchApplySeconds.observe(seconds)
    this.batchSize.observe(statuses.length)
    for (const status of statuses) this.purchasesApplied.inc({ status })
  }

  /** The Prometheus text exposition and its content type. */
  async exposition (): Promise<{ contentType: string, body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
