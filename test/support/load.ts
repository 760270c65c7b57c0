/**
 * The one load generator of the tests and the bench (bench/scenarios.ts):
 * undici Pools with keep-alive and pipelining 1, `concurrency` loops sending
 * exactly `total` purchases (or until `durationMs`), spread round-robin over
 * several API replicas, each answer recorded with its latency. Not `fetch`:
 * its per-request overhead would load the client instead of the server.
 */
import { randomUUID } from 'node:crypto'
import { Pool, request } from 'undici'

export interface PurchaseSpec {
  optionId: string
  quantity: number
  /** the buyer; a fresh uuid per purchase when absent */
  userId?: string
}

export interface Answer {
  /** HTTP status, 0 when the request itself failed (connection refused or reset) */
  status: number
  /** the JSON body; `{}` when there was none or it was not JSON */
  body: Record<string, any>
  spec: PurchaseSpec
  /** which URL (API replica) it was sent to: an index into `urls` */
  api: number
  /** the purchase id the client learned (201, 202, 409), if any */
  purchaseId?: string
  /** ms from the start of the run to this answer */
  at: number
  /** for a 202 followed through the status route (test/support/purchase-burst.ts `settlePending`) */
  settled?: 'succeeded' | 'rejected' | 'pending' | 'not_found'
}

export interface LoadOptions {
  /** base URLs of the API replicas */
  urls: string[]
  total: number
  /** requests in flight at once, which is also the number of keep-alive connections */
  concurrency: number
  /** the purchase sent as request number `i` */
  spec: (i: number) => PurchaseSpec
  /** stop starting requests after this long (a soak), even before `total` */
  durationMs?: number
  /** pause between two requests of one connection (ms), to stretch a burst over time */
  pauseMs?: number
  /** called after each answer, with how many have been answered; a fault test strikes from here */
  onAnswer?: (answer: Answer, answered: number) => void
  /** longest wait for one answer (ms) */
  timeoutMs?: number
}

export interface LoadResult {
  /** requests sent */
  total: number
  elapsedMs: number
  /** answer of request `i` at index `i` */
  answers: Answer[]
  /** latency of request `i` (ms) at index `i` */
  latencies: Float64Array
  byStatus: Record<string, number>
  /** requests that got no HTTP answer */
  errors: number
}

function purchaseIdOf (status: number, body: Record<string, unknown>): string | undefined {
  const id = status === 202 || status === 201 ? body.id : body.purchase_id
  return typeof id === 'string' ? id : undefined
}

function parse (text: string): Record<string, any> {
  try {
    const parsed: unknown = JSON.parse(text)
    return typeof parsed === 'object' && parsed !== null ? parsed as Record<string, any> : {}
  } catch {
    return {}
  }
}

export async function runPurchases (options: LoadOptions): Promise<LoadResult> {
  const { urls, total, concurrency, spec, durationMs, pauseMs = 0, onAnswer, timeoutMs = 120_000 } = options
  const perUrl = Math.ceil(concurrency / urls.length)
  const pools = urls.map((url) => new Pool(url, { connections: perUrl, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: timeoutMs, bodyTimeout: timeoutMs }))
  // Plain arrays: a timed run (soak) does not know its count in advance.
  const latencies: number[] = []
  const answers: Answer[] = []
  const byStatus: Record<string, number> = {}
  let errors = 0
  let next = 0
  let answered = 0
  const started = performance.now()
  const stopAt = durationMs === undefined ? Infinity : started + durationMs

  async function loop (lane: number): Promise<void> {
    const api = lane % pools.length
    const pool = pools[api] as Pool
    while (next < total && performance.now() < stopAt) {
      const i = next++
      const s = spec(i)
      const body = JSON.stringify({ quantity: s.quantity, user_id: s.userId ?? randomUUID() })
      const t0 = performance.now()
      let answer: Answer
      try {
        const res = await pool.request({ method: 'POST', path: `/ticket_options/${s.optionId}/purchases`, headers: { 'content-type': 'application/json' }, body })
        const parsed = parse(await res.body.text())
        answer = { status: res.statusCode, body: parsed, spec: s, api, at: performance.now() - started }
        const purchaseId = purchaseIdOf(res.statusCode, parsed)
        if (purchaseId !== undefined) answer.purchaseId = purchaseId
      } catch (err) {
        errors++
        answer = { status: 0, body: { error: String(err) }, spec: s, api, at: performance.now() - started }
      }
      latencies[i] = performance.now() - t0
      answers[i] = answer
      const key = answer.status === 0 ? 'error' : String(answer.status)
      byStatus[key] = (byStatus[key] ?? 0) + 1
      onAnswer?.(answer, ++answered)
      if (pauseMs > 0) await new Promise((resolve) => setTimeout(resolve, pauseMs))
    }
  }

  try {
    await Promise.all(Array.from({ length: concurrency }, async (_, lane) => { await loop(lane) }))
  } finally {
    await Promise.all(pools.map(async (p) => { await p.close() }))
  }
  return { total: next, elapsedMs: performance.now() - started, answers, latencies: Float64Array.from(latencies), byStatus, errors }
}

/** Answers counted by status; a followed 202 counts as `202->succeeded`, `202->rejected`, ... */
export function countByStatus (answers: readonly Answer[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const a of answers) {
    const key = a.status === 202 && a.settled !== undefined ? `202->${a.settled}` : String(a.status)
    counts[key] = (counts[key] ?? 0) + 1
  }
  return counts
}

/** One JSON request (setup and reads); status 0 when it got no answer. */
export async function callJson (baseUrl: string, method: 'GET' | 'POST', path: string, payload?: unknown): Promise<{ status: number, body: Record<string, any> }> {
  try {
    const res = await request(`${baseUrl}${path}`, {
      method,
      headers: payload === undefined ? {} : { 'content-type': 'application/json' },
      body: payload === undefined ? undefined : JSON.stringify(payload),
    })
    return { status: res.statusCode, body: parse(await res.body.text()) }
  } catch {
    return { status: 0, body: {} }
  }
}
