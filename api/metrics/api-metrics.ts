/**
 * The API's Prometheus metrics. One Registry per app, not prom-client's
 * global one, so tests that build several apps in one process do not collide.
 * Request and purchase instruments are updated in memory as answers go out;
 * the only Redis read (queue depths) happens on scrape, with a time limit.
 * Keep in sync with README.md "Metrics".
 * @see https://github.com/siimon/prom-client
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { Logger } from 'pino'
import type { PurchaseObserver } from '../purchasing/sale-service'
import type { Db } from '../../shared/db'
import { registerDependencyGauge } from '../../shared/dependency-gauge'
import { collectProcessMetrics } from '../../shared/process-metrics'
import type { QueueStore } from '../../shared/health-checks'
import { QUEUE_STATES, type QueueDepths } from './queue-depths'
import { TICKET_STOCK_TOP, type TicketStock } from './ticket-stock'

/** The route label of requests that matched no route: one label, whatever the URL, so labels stay bounded. */
export const UNMATCHED_ROUTE = 'unmatched'

/** Seconds; most answers take a few ms, a purchase up to PURCHASE_WAIT_MS (5 s by default). */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

export type PurchaseOutcome = 'succeeded' | 'rejected' | 'pending'

/** How a request on the direct path ended (direct_requests_total's `result`). */
export type DirectResult = 'applied' | 'declined' | 'queued'

/**
 * A counter of one label whose increments are summed in plain numbers and
 * handed to prom-client on scrape: its inc with labels hashes and checks them
 * on every call, and these are counted on every purchase. A label value
 * appears once it has been counted, as with an inc.
 */
class CountsOnScrape<V extends string> {
  private readonly counts = new Map<V, { counted: number, reported: number }>()

  constructor (private readonly counter: Counter<string>, private readonly label: string, values: readonly V[]) {
    for (const value of values) this.counts.set(value, { counted: 0, reported: 0 })
  }

  add (value: V, n: number): void {
    (this.counts.get(value) as { counted: number }).counted += n
  }

  /** The counter's collect: what was counted since the last scrape, added to it. */
  report (): void {
    for (const [value, count] of this.counts) {
      if (count.counted === count.reported) continue
      this.counter.inc({ [this.label]: value }, count.counted - count.reported)
      count.reported = count.counted
    }
  }
}

export class ApiMetrics implements PurchaseObserver {
  readonly registry = new Registry()

  readonly httpRequestDuration = new Histogram({
    name: 'http_request_duration_seconds',
    help: 'Time from receiving a request to sending its answer, by route pattern and status code',
    labelNames: ['method', 'route', 'status_code'] as const,
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  })

  private readonly purchases: CountsOnScrape<PurchaseOutcome> = new CountsOnScrape(new Counter({
    name: 'purchases_total',
    help: 'Purchases answered after reaching a queue, by outcome: succeeded (201), rejected (409), pending (202)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
    collect: () => { this.purchases.report() },
  }), 'outcome', ['succeeded', 'rejected', 'pending'])

  readonly purchaseOutcomeWait = new Histogram({
    name: 'purchase_outcome_wait_seconds',
    help: 'Time from enqueueing a purchase to knowing its outcome, as the API sees it (202 answers are not observed; see purchases_total{outcome="pending"})',
    buckets: DURATION_BUCKETS,
    registers: [this.registry],
  })

  private readonly directRequests: CountsOnScrape<DirectResult> = new CountsOnScrape(new Counter({
    name: 'direct_requests_total',
    help: 'Requests that tried the direct path (an option with nobody in line, applied by the API itself), by how it ended: applied, declined (the option had a line: queued as usual), queued (the direct batch failed and was queued at the head of its queue)',
    labelNames: ['result'] as const,
    registers: [this.registry],
    collect: () => { this.directRequests.report() },
  }), 'result', ['applied', 'declined', 'queued'])

  readonly queueJobs = new Gauge({
    name: 'purchase_queue_jobs',
    help: 'Jobs in the deepest option queues of the registry of active options, by state (read on scrape)',
    labelNames: ['ticket_option_id', 'state'] as const,
    registers: [this.registry],
  })

  readonly queueJobsScanned = new Gauge({
    name: 'purchase_queue_jobs_scanned',
    help: 'Jobs summed over the most recently used option queues read on scrape, by state',
    labelNames: ['state'] as const,
    registers: [this.registry],
  })

  readonly queueOptionsRegistered = new Gauge({
    name: 'purchase_queue_options_registered',
    help: 'Options in the registry of active options',
    registers: [this.registry],
  })

  readonly queueDepthUp = new Gauge({
    name: 'purchase_queue_depth_up',
    help: '1 when the last scrape read the queue depths from Redis in time, 0 when it failed (the depth series are then left out)',
    registers: [this.registry],
  })

  readonly eventStreamsOpen = new Gauge({
    name: 'event_streams_open',
    help: 'Server-Sent Event streams of queued purchases and holds open on this API process',
    registers: [this.registry],
  })

  readonly ticketOptionsUnbalanced = new Gauge({
    name: 'ticket_options_unbalanced',
    help: 'Recently active options whose ledger does not balance (initial_allocation != available + held + sold) at the last check; 0 when all is well',
    registers: [this.registry],
  })

  readonly ticketOptionTickets = new Gauge({
    name: 'ticket_option_tickets',
    help: `Tickets of the ${TICKET_STOCK_TOP} options whose tickets moved most recently, by state: available, held, sold (read from PostgreSQL on scrape)`,
    labelNames: ['ticket_option_id', 'state'] as const,
    registers: [this.registry],
  })

  readonly ticketStockUp = new Gauge({
    name: 'ticket_stock_up',
    help: '1 when the last scrape read ticket_option_tickets from PostgreSQL in time, 0 when it failed (those series are then left out)',
    registers: [this.registry],
  })

  private queueDepths: QueueDepths | undefined
  private ticketStock: TicketStock | undefined
  private log: Logger | undefined

  constructor () {
    collectProcessMetrics(this.registry)
  }

  /** `requests` that tried the direct path ended so. */
  directRequestsEnded (result: DirectResult, requests: number): void {
    this.directRequests.add(result, requests)
  }

  /** Starts reporting queue depths, read from Redis on each scrape. */
  watchQueueDepths (queueDepths: QueueDepths, log: Logger): void {
    this.queueDepths = queueDepths
    this.log = log
  }

  /** Starts reporting the busiest options' tickets, read from PostgreSQL on each scrape. */
  watchTicketStock (ticketStock: TicketStock, log: Logger): void {
    this.ticketStock = ticketStock
    this.log = log
  }

  /** Starts reporting `dependency_up`, checked on each scrape. */
  watchDependencies (db: Db, queues: QueueStore): void {
    registerDependencyGauge(this.registry, db, queues)
  }

  /** One answered request; `route` is the route pattern, or null when none matched. */
  requestAnswered (method: string, route: string | null, statusCode: number, seconds: number): void {
    this.httpRequestDuration.observe({ method, route: route ?? UNMATCHED_ROUTE, status_code: statusCode }, seconds)
  }

  /** PurchaseObserver: a purchase that reached a queue was answered. */
  purchaseAnswered (outcome: PurchaseOutcome, enqueuedAt: number): void {
    this.purchases.add(outcome, 1)
    if (outcome !== 'pending') this.purchaseOutcomeWait.observe(Math.max(0, Date.now() - enqueuedAt) / 1000)
  }

  private async readQueueDepths (): Promise<void> {
    if (this.queueDepths === undefined) return
    // Options that left the top N must not linger as stale series.
    this.queueJobs.reset()
    this.queueJobsScanned.reset()
    try {
      const snapshot = await this.queueDepths.read()
      this.queueOptionsRegistered.set(snapshot.registered)
      for (const depth of snapshot.deepest) {
        for (const state of QUEUE_STATES) this.queueJobs.set({ ticket_option_id: depth.ticketOptionId, state }, depth[state])
      }
      for (const state of QUEUE_STATES) this.queueJobsScanned.set({ state }, snapshot.total[state])
      this.queueDepthUp.set(1)
    } catch (err) {
      this.log?.warn({ err }, 'could not read queue depths for /metrics')
      this.queueDepthUp.set(0)
    }
  }

  private async readTicketStock (): Promise<void> {
    if (this.ticketStock === undefined) return
    // Options that left the top N must not linger as stale series.
    this.ticketOptionTickets.reset()
    try {
      for (const stock of await this.ticketStock.read()) {
        for (const state of ['available', 'held', 'sold'] as const) this.ticketOptionTickets.set({ ticket_option_id: stock.ticketOptionId, state }, stock[state])
      }
      this.ticketStockUp.set(1)
    } catch (err) {
      this.log?.warn({ err }, 'could not read the ticket stock for /metrics')
      this.ticketStockUp.set(0)
    }
  }

  /** The Prometheus text exposition and its content type. */
  async exposition (): Promise<{ contentType: string, body: string }> {
    await Promise.all([this.readQueueDepths(), this.readTicketStock()])
    return { contentType: this.registry.contentType, body: await this.registry.metrics() }
  }
}
