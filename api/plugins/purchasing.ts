/**
 * Opens what the routes need: the PostgreSQL pool, the queue backend (Redis
 * or PostgreSQL, shared/queues/queue-backend.ts) with its outcome
 * subscription, the sale service
 * (purchases, holds, confirmations, releases, cancellations) on top of them,
 * and the scheduled check of the ledgers. Closed in reverse order when the
 * app closes.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Logger } from 'pino'
import type { Config } from '../../shared/config'
import { createPool, DedicatedConnection, type Db } from '../../shared/db'
import { AT_ONCE_SESSION, recordedIds } from '../../shared/purchases/sale-store'
import { openQueueBackend, type QueueBackend } from '../../shared/queues/queue-backend'
import { GroupCommit } from '../../shared/purchases/group-commit'
import { DirectFences } from '../purchasing/direct-fences'
import { DirectSales } from '../purchasing/direct-sales'
import { OutcomeWaiter } from '../purchasing/outcome-waiter'
import { PurchaseQueues } from '../purchasing/purchase-queues'
import { QueueBackpressure } from '../purchasing/queue-backpressure'
import { OutcomeStreams } from '../purchasing/outcome-streams'
import { QueueLine } from '../purchasing/queue-line'
import { QUEUE_DEPTH_SCANNED, QUEUE_DEPTH_TIMEOUT_MS, QUEUE_DEPTH_TOP, QueueDepths } from '../metrics/queue-depths'
import { startLedgerReconciler } from '../metrics/ledger-reconciler'
import { TicketStock } from '../metrics/ticket-stock'
import { SaleService } from '../purchasing/sale-service'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
    queueBackend: QueueBackend
    sales: SaleService
    outcomeWaiter: OutcomeWaiter
    queueLine: QueueLine
    outcomeStreams: OutcomeStreams
  }
}

export interface PurchasingOptions {
  config: Config
}

async function purchasingPlugin (app: FastifyInstance, { config }: PurchasingOptions): Promise<void> {
  // Fastify's logger is a pino logger; its declared type is a narrower interface.
  const log = app.log as unknown as Logger
  const db = createPool(config.databaseUrl, config.databasePoolSize, log)
  const backend = openQueueBackend(config, log, 'api')
  const line = new QueueLine(backend)
  const waiter = new OutcomeWaiter(backend, line, log)
  const queues = new PurchaseQueues(backend, log)
  const backpressure = new QueueBackpressure({
    waitingCount: async (ticketOptionId) => await queues.waitingCount(ticketOptionId),
    maxWaiting: config.queueMaxWaiting,
  })
  // The direct path's transactions: with other options' batches of the moment, half the pool at most;
  // a lone batch on a connection of its own, which runs only that (AT_ONCE_SESSION).
  const direct = config.directPurchases && backend.directPurchases
    ? new DirectSales({
      backend,
      transactions: new GroupCommit(db, Math.max(1, Math.floor(config.databasePoolSize / 2))),
      atOnce: new DedicatedConnection(createPool(config.databaseUrl, 1, log, AT_ONCE_SESSION)),
      queues,
      leaseMs: config.directLeaseMs,
      maxBatch: config.workerBatchSize,
      log,
      onBatch: (result, requests) => { app.metrics.directRequestsEnded(result, requests) },
    })
    : undefined
  const sales = new SaleService({
    db,
    queues,
    waiter,
    line,
    fences: new DirectFences(db, backend, log),
    waitMs: config.purchaseWaitMs,
    log,
    observer: app.metrics,
    idempotencyKeyTtlHours: config.idempotencyKeyTtlHours,
    backpressure,
    direct,
  })
  const streams = new OutcomeStreams({
    waiter,
    line,
    log,
    recorded: async (purchaseIds, reservationIds) => await recordedIds(db, purchaseIds, reservationIds),
    onCount: (open) => { app.metrics.eventStreamsOpen.set(open) },
  })
  app.metrics.watchQueueDepths(new QueueDepths({ backend, scanned: QUEUE_DEPTH_SCANNED, top: QUEUE_DEPTH_TOP, timeoutMs: QUEUE_DEPTH_TIMEOUT_MS }), log)
  app.metrics.watchTicketStock(new TicketStock(db), log)
  app.metrics.watchDependencies(db, backend)

  app.decorate('db', db)
  app.decorate('queueBackend', backend)
  app.decorate('outcomeWaiter', waiter)
  app.decorate('queueLine', line)
  app.decorate('outcomeStreams', streams)
  app.decorate('sales', sales)

  const reconciler = startLedgerReconciler(db, log, config.reconcileIntervalMs, (unbalanced) => { app.metrics.ticketOptionsUnbalanced.set(unbalanced) })

  app.addHook('onClose', async () => {
    await reconciler.stop()
    streams.close()
    // Before the backend closes: it announces the direct outcomes still pending.
    await direct?.close()
    await queues.close()
    await backend.close()
    await db.end()
  })

  await backend.waitUntilReady(10_000)
  await waiter.start()
}

export default fp(purchasingPlugin, { name: 'purchasing', dependencies: ['metrics'] })
