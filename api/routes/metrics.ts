/**
 * GET /metrics (API.md "Operator routes"): Prometheus text format. The
 * instruments live in api/metrics/api-metrics.ts; queue depths are read on scrape
 * with a time limit, so a Redis outage does not hang this route.
 */
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'

const metricsRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const { metrics } = app

  // Scraped every few seconds: only failures are worth a log line.
  app.get('/metrics', {
    logLevel: 'warn',
    schema: {
      tags: ['operations'],
      summary: 'Prometheus metrics (text exposition format 0.0.4)',
      response: {
        200: {
          description: 'Prometheus text format',
          content: { 'text/plain; version=0.0.4; charset=utf-8': { schema: Type.String() } },
        },
      },
    },
  }, async (_request, reply) => {
    const { contentType, body } = await metrics.exposition()
    return await reply.type(contentType).send(body)
  })
}

export default metricsRoutes
