/**
 * The worker's own small HTTP server for probes: GET /health/live (the
 * process is up) and GET /health/ready (PostgreSQL, and Redis when the queues are on it, answer; 503 with
 * Retry-After otherwise), with the same bodies as the API's routes
 * (api/routes/health.ts). Plain node:http: the worker has no Fastify.
 * It listens on WORKER_HEALTH_PORT (0 = a free port; a free one too when the
 * port is taken by another worker) and logs the port it bound.
 * It also serves GET /metrics (Prometheus text, worker/monitoring/metrics.ts).
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import { catalogueBody, RETRY_AFTER_SECONDS } from '../../shared/error-catalogue'
import { checkReadiness, isReady, readinessChecks, unavailableDependencies, type QueueStore } from '../../shared/health-checks'
import type { WorkerMetrics } from './metrics'

export interface HealthServerOptions {
  host: string
  port: number
  db: Db
  /** the queue backend's store */
  queues: QueueStore
  log: Logger
  /** serves GET /metrics (worker/monitoring/metrics.ts) when given */
  metrics?: Pick<WorkerMetrics, 'exposition'>
}

export interface HealthServer {
  /** the port actually bound (useful when asked for 0) */
  port: number
  close: () => Promise<void>
}

function send (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(text)),
    // Probes ask once and go; a kept-alive probe connection would only hold up shutdown.
    connection: 'close',
    ...headers,
  })
  res.end(text)
}

async function listen (server: http.Server, port: number, host: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => { server.off('error', reject); resolve() })
  })
}

export async function startHealthServer (options: HealthServerOptions): Promise<HealthServer> {
  const { host, port, db, queues, log, metrics } = options

  async function handle (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0] ?? ''
    const method = req.method ?? 'GET'
    if (method === 'GET' && path === '/health/live') return send(res, 200, { status: 'ok' })
    if (method === 'GET' && path === '/metrics' && metrics !== undefined) {
      const { contentType, body } = await metrics.exposition()
      res.writeHead(200, { 'content-type': contentType, 'content-length': String(Buffer.byteLength(body)), connection: 'close' })
      res.end(body)
      return
    }
    if (method === 'GET' && path === '/health/ready') {
      const readiness = await checkReadiness(db, queues)
      if (isReady(readiness)) return send(res, 200, { status: 'ok', checks: readinessChecks(readiness) })
      const down = unavailableDependencies(readiness)
      log.warn({ readiness }, 'worker not ready')
      return send(res, 503, catalogueBody('SERVICE_UNAVAILABLE', [down]), { 'retry-after': String(RETRY_AFTER_SECONDS) })
    }
    send(res, 404, catalogueBody('ROUTE_NOT_FOUND', [method, path]))
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err }, 'health request failed')
      if (!res.headersSent) send(res, 500, catalogueBody('INTERNAL_SERVER_ERROR'))
    })
  })
  server.requestTimeout = 5000

  try {
    await listen(server, port, host)
  } catch (err) {
    // A second worker on the same host (two `npm run start:worker`, or replicas
    // sharing a network) finds the port taken: it serves on a free port instead
    // of crashing, and says which. Probes of the first keep their port.
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) {
      throw new Error(`worker health server cannot listen on ${host}:${port} (WORKER_HEALTH_PORT): ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
    }
    await listen(server, 0, host)
    log.warn({ host, wanted: port, port: (server.address() as AddressInfo).port }, 'WORKER_HEALTH_PORT is taken (another worker on this host?); health and metrics listen on a free port instead')
  }
  const bound = (server.address() as AddressInfo).port
  log.info({ host, port: bound }, 'worker health listening')

  return {
    port: bound,
    async close () {
      const closed = new Promise<void>((resolve) => { server.close(() => { resolve() }) })
      server.closeAllConnections()
      await closed
    },
  }
}
