/**
 * `dependency_up{dependency}` for GET /metrics of the API and the worker:
 * 1 when PostgreSQL (and Redis, when the queues are on it) answer the
 * readiness check at scrape time, 0 when not. The same check as
 * /health/ready (shared/health-checks.ts), so a dashboard and a probe never
 * disagree; each scrape asks afresh, within HEALTH_CHECK_TIMEOUT_MS.
 */
import { Gauge, type Registry } from 'prom-client'
import type { Db } from './db'
import { checkReadiness, type QueueStore } from './health-checks'

export function registerDependencyGauge (registry: Registry, db: Db, queues: QueueStore): Gauge<'dependency'> {
  return new Gauge({
    name: 'dependency_up',
    help: 'Whether a store answered the readiness check at scrape time (1) or not (0), by dependency: postgres, and redis when the queues are on Redis',
    labelNames: ['dependency'] as const,
    registers: [registry],
    async collect () {
      const readiness = await checkReadiness(db, queues)
      this.set({ dependency: 'postgres' }, readiness.postgres ? 1 : 0)
      if (readiness.queues !== null) this.set({ dependency: readiness.queues.name.toLowerCase() }, readiness.queues.up ? 1 : 0)
    },
  })
}
