/**
 * The load generator: undici Pools with keep-alive, pipelining 1 and N
 * connections, N concurrent loops sending exactly `total` requests, with our
 * own latency recording and per-status tallies. Not `fetch`: its per-request
 * overhead would measure the client instead of the server.
 */
import { randomUUID } from 'node:crypto'
import { Pool } from 'undici'

export interface PurchaseSpec {
  optionId: string
  quantity: number
}

export interface Answer {
  status: number
  /** parsed JSON body, or undefined when not JSON */
  body: any
  spec: PurchaseSpec
}

export interface LoadResult {
  total: number
  elapsedMs: number
  /** per request (index = request number), ms */
  latencies: Float64Array
  byStatus: Record<string, number>
  answers: Answer[]
  /** transport errors (no HTTP answer) */
  errors: number
}

/**
 * Sends `total` purchases, request i built by `spec(i)`, through `concurrency`
 * keep-alive connections spread over `urls` (several API replicas round-robin).
 */
export async function runPurchases (urls: string[], total: number, concurrency: number, spec: (i: number) => PurchaseSpec, durationMs?: number): Promise<LoadResult> {
  const perUrl = Math.ceil(concurrency / urls.length)
  const pools = urls.map((url) => new Pool(url, { connections: perUrl, pipelining: 1, keepAliveTimeout: 60_000 }))
  // Plain arrays: a timed run (soak) does not know its count in advance.
  const latencies: number[] = []
  const answers: Answer[] = []
  const byStatus: Record<string, number> = {}
  let errors = 0
  let next = 0
  const started = performance.now()
  const stopAt = durationMs === undefined ? Infinity : started + durationMs
  async function loop (lane: number): Promise<void> {
    const pool = pools[lane % pools.length] as Pool
    for (;;) {
      if (next >= total || performance.now() >= stopAt) return
      const i = next++
      const s = spec(i)
      const body = JSON.stringify({ quantity: s.quantity, user_id: randomUUID() })
      const t0 = performance.now()
      try {
        const res = await pool.request({
          method: 'POST',
          path: `/ticket_options/${s.optionId}/purchases`,
          headers: { 'content-type': 'application/json' },
          body,
        })
        const text = await res.body.text()
        latencies[i] = performance.now() - t0
        let parsed: unknown
        try { parsed = JSON.parse(text) } catch {}
        answers[i] = { status: res.statusCode, body: parsed, spec: s }
        byStatus[res.statusCode] = (byStatus[res.statusCode] ?? 0) + 1
      } catch {
        latencies[i] = performance.now() - t0
        errors++
        answers[i] = { status: 0, body: undefined, spec: s }
        byStatus.error = (byStatus.error ?? 0) + 1
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, async (_, lane) => { await loop(lane) }))
  const elapsedMs = performance.now() - started
  await Promise.all(pools.map(async (p) => { await p.close() }))
  return { total: next, elapsedMs, latencies: Float64Array.from(latencies), byStatus, answers, errors }
}

export interface LatencySummary {
  p50: number
  p95: number
  p99: number
  max: number
}

export function summarize (latencies: Float64Array): LatencySummary {
  const sorted = Float64Array.from(latencies).sort()
  const at = (q: number): number => {
    if (sorted.length === 0) return 0
    const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
    return round(sorted[idx] as number)
  }
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1) }
}

export const round = (n: number, digits = 2): number => Math.round(n * 10 ** digits) / 10 ** digits

/** Small JSON helper for setup requests (create option, read option, purchase status). */
export async function call (url: string, method: 'GET' | 'POST', path: string, payload?: unknown): Promise<{ status: number, body: any }> {
  const { request } = await import('undici')
  const res = await request(`${url}${path}`, {
    method,
    headers: payload === undefined ? {} : { 'content-type': 'application/json' },
    body: payload === undefined ? undefined : JSON.stringify(payload),
  })
  const text = await res.body.text()
  let body: unknown
  try { body = JSON.parse(text) } catch { body = text }
  return { status: res.statusCode, body }
}
