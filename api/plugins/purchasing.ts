/**
 * Opens what the routes need: the PostgreSQL pool, the fail-fast Redis
 * connection for queues, the outcome subscriber, the sale service
 * (purchases, holds, confirmations, releases, cancellations) on top of them,
 * and the scheduled check of the ledgers. Closed in reverse order when the
 * app closes.
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from '../../shared/config'
import { createPool, type Db } from '../../shared/db'
import { recordedIds } from '../../shared/purchases/sale-store'
import { createProducerConnection, createWorkerConnection, waitUntilReady } from '../../shared/redis'
import { OutcomeWaiter } from '../purchasing/outcome-waiter'
import { PurchaseQueues } from '../purchasing/purchase-queues'
import { QueueBackpressure } from '../purchasing/queue-backpressure'
import { OutcomeStreams } from '../purchasing/outcome-streams'
import { QueueLine } from '../purchasing/queue-line'
import { QUEUE_DEPTH_SCANNED, QUEUE_DEPTH_TIMEOUT_MS, QUEUE_DEPTH_TOP, QueueDepths } from '../metrics/queue-depths'
import { startLedgerReconciler } from '../metrics/ledger-reconciler'
import { SaleService } from '../purchasing/sale-service'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
    redis: Redis
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
  const redis = createProducerConnection(config.redisUrl, log, `${config.queuePrefix}-api`)
  // Subscribers wait out outages and re-subscribe by themselves.
  const subscriber = createWorkerConnection(config.redisUrl, log, `${config.queuePrefix}-api-outcomes`)
  const line = new QueueLine(redis, config.queuePrefix)
  const waiter = new OutcomeWaiter(subscriber, config.queuePrefix, log, line)
  const queues = new PurchaseQueues(redis, config.queuePrefix, log)
  const backpressure = new QueueBackpressure({
    waitingCount: async (ticketOptionId) => await queues.waitingCount(ticketOptionId),
    maxWaiting: config.queueMaxWaiting,
  })
  const sales = new SaleService({
    db,
    queues,
    waiter,
    line,
    waitMs: config.purchaseWaitMs,
    log,
    observer: app.metrics,
    idempotencyKeyTtlHours: config.idempotencyKeyTtlHours,
    backpressure,
  })
  const streams = new OutcomeStreams({
    waiter,
    line,
    log,
    recorded: async (purchaseIds, reservationIds) => await recordedIds(db, purchaseIds, reservationIds),
    onCount: (open) => { app.metrics.eventStreamsOpen.set(open) },
  })
  app.metrics.watchQueueDepths(new QueueDepths({ redis, prefix: config.queuePrefix, scanned: QUEUE_DEPTH_SCANNED, top: QUEUE_DEPTH_TOP, timeoutMs: QUEUE_DEPTH_TIMEOUT_MS }), log)

  app.decorate('db', db)
  app.decorate('redis', redis)
  app.decorate('outcomeWaiter', waiter)
  app.decorate('queueLine', line)
  app.decorate('outcomeStreams', streams)
  app.decorate('sales', sales)

  const reconciler = startLedgerReconciler(db, log, config.reconcileIntervalMs, (unbalanced) => { app.metrics.ticketOptionsUnbalanced.set(unbalanced) })

  app.addHook('onClose', async () => {
    await reconciler.stop()
    streams.close()
    await queues.close()
    subscriber.disconnect()
    await redis.quit().catch(() => { redis.disconnect() })
    await db.end()
  })

  await waitUntilReady(redis, 10_000)
  await waiter.start()
}

export default fp(purchasingPlugin, { name: 'purchasing', dependencies: ['metrics'] })
