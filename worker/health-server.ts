/**
 * The worker's own small HTTP server for probes: GET /health/live (the
 * process is up) and GET /health/ready (PostgreSQL and Redis answer; 503 with
 * Retry-After otherwise), with the same bodies as the API's routes
 * (api/routes/health.ts). Plain node:http: the worker has no Fastify.
 * It listens on WORKER_HEALTH_PORT (0 = a free port) and logs the port it bound.
 * It also serves GET /metrics (Prometheus text, worker/metrics.ts).
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Db } from '../shared/db'
import { checkReadiness, isReady, unavailableDependencies } from '../shared/health-checks'
import type { WorkerMetrics } from './metrics'

/** Seconds a prober should wait before asking again after a 503 (as the API says). */
const RETRY_AFTER_SECONDS = 1

export interface HealthServerOptions {
  host: string
  port: number
  db: Db
  redis: Redis
  log: Logger
  /** serves GET /metrics (worker/metrics.ts) when given */
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

export async function startHealthServer (options: HealthServerOptions): Promise<HealthServer> {
  const { host, port, db, redis, log, metrics } = options

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
      const readiness = await checkReadiness(db, redis)
      if (isReady(readiness)) return send(res, 200, { status: 'ok', checks: { postgres: 'ok', redis: 'ok' } })
      const down = unavailableDependencies(readiness)
      log.warn({ readiness }, 'worker not ready')
      return send(res, 503, {
        statusCode: 503,
        error: 'Service Unavailable',
        message: `${down} is unavailable, try again shortly`,
        code: 'SERVICE_UNAVAILABLE',
      }, { 'retry-after': String(RETRY_AFTER_SECONDS) })
    }
    send(res, 404, { statusCode: 404, error: 'Not Found', message: `Route ${method} ${path} not found`, code: 'ROUTE_NOT_FOUND' })
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err }, 'health request failed')
      if (!res.headersSent) send(res, 500, { statusCode: 500, error: 'Internal Server Error', message: 'Internal Server Error', code: 'INTERNAL_SERVER_ERROR' })
    })
  })
  server.requestTimeout = 5000

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      reject(new Error(`worker health server cannot listen on ${host}:${port} (WORKER_HEALTH_PORT): ${err.code ?? err.message}`))
    }
    server.once('error', onError)
    server.listen(port, host, () => { server.off('error', onError); resolve() })
  })
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
