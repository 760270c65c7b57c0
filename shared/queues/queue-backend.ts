/**
 * Where the queues live, chosen once at start (API.md "Where it runs",
 * DESIGN.md "Two queue backends, one code path"): Redis, or BullMQ's
 * PostgreSQL backend. Everything that differs between the two sits behind
 * one interface (queue-backend-types.ts); the API, the worker and the
 * dashboard use only it, so nothing outside this folder knows which runs.
 *
 * Besides BullMQ's own queues, a backend carries what the service keeps next
 * to them: the registry of active options and the worker wake-up, the
 * outcome messages that answer waiting buyers, and each option's line
 * numbers (API.md "Waiting in line").
 */
import type { Logger } from 'pino'
import type { Config } from '../config'
import { migratePostgresQueues, openPostgresQueueBackend } from './postgres-queue-backend'
import { openRedisQueueBackend } from './redis-queue-backend'
import type { QueueBackend, QueueBackendRole } from './queue-backend-types'

export type * from './queue-backend-types'

/** Opens the backend the configuration names, and logs which one it is. */
export function openQueueBackend (config: Config, log: Logger, role: QueueBackendRole): QueueBackend {
  const backend = config.queueBackend === 'postgres'
    ? openPostgresQueueBackend(config, log, role)
    : openRedisQueueBackend(config, log, role)
  const cluster = backend.kind === 'redis' && config.redisClusterNodes !== null
  log.info({ queueBackend: backend.kind, role, ...(cluster ? { redisClusterNodes: config.redisClusterNodes?.length } : {}) }, `queues on ${backend.storeName}${cluster ? ' Cluster' : ''}`)
  return backend
}

/**
 * Gets the queue store ready for the service (`npm run migrate`): on
 * PostgreSQL, BullMQ's own tables (its migrations, advisory-locked, so
 * concurrent starters run them once); Redis needs nothing.
 */
export async function prepareQueueStore (config: Config): Promise<void> {
  if (config.queueBackend === 'postgres') await migratePostgresQueues(config.databaseUrl)
}
