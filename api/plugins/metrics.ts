/**
 * Prometheus metrics for the API (api/metrics/api-metrics.ts), served by
 * api/routes/metrics.ts at GET /metrics. Registered before the routes so that
 * its onResponse hook times every route, the 404 handler included. The
 * purchasing plugin reports purchase outcomes and hands over the Redis
 * connection for queue depths (`watchQueueDepths`).
 * Keep in sync with README.md "Metrics".
 * @see https://github.com/siimon/prom-client
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ApiMetrics } from '../metrics/api-metrics'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: ApiMetrics
  }
}

async function metricsPlugin (app: FastifyInstance): Promise<void> {
  const metrics = new ApiMetrics()
  app.decorate('metrics', metrics)

  app.addHook('onResponse', (request, reply, done) => {
    // The route pattern (e.g. /ticket_options/:id/purchases), never the raw
    // URL, so the label set stays bounded; no route matched: one label.
    const route = request.is404 ? null : (request.routeOptions.url ?? null)
    metrics.requestAnswered(request.method, route, reply.statusCode, reply.elapsedTime / 1000)
    done()
  })
}

export default fp(metricsPlugin, { name: 'metrics' })
