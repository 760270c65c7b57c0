/**
 * Fires many purchases at once over keep-alive connections (undici, not
 * fetch, which is too slow to load a server) and tallies the answers.
 */
import { Pool } from 'undici'
import type { Teardown } from './environment'

export interface Answer {
  status: number
  body: Record<string, unknown>
  /** which API answered (index into the pools) */
  api: number
}

export function openPools (t: Teardown, urls: string[], connections = 256): Pool[] {
  const pools = urls.map((url) => new Pool(url, { connections, pipelining: 1, keepAliveTimeout: 30_000 }))
  t.teardown(async () => { await Promise.all(pools.map(async (pool) => { await pool.destroy() })) })
  return pools
}

export async function request (pool: Pool, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number, body: Record<string, unknown> }> {
  const res = await pool.request({
    method,
    path,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.body.text()
  return { status: res.statusCode, body: text === '' ? {} : JSON.parse(text) as Record<string, unknown> }
}

/** Sends every purchase at once, spread round-robin over the pools. */
export async function burst (pools: Pool[], purchases: Array<{ optionId: string, quantity: number, userId: string }>): Promise<Answer[]> {
  return await Promise.all(purchases.map(async (p, i) => {
    const api = i % pools.length
    const answer = await request(pools[api] as Pool, 'POST', `/ticket_options/${p.optionId}/purchases`, { quantity: p.quantity, user_id: p.userId })
    return { ...answer, api }
  }))
}

export function countByStatus (answers: Answer[]): Record<number, number> {
  const counts: Record<number, number> = {}
  for (const a of answers) counts[a.status] = (counts[a.status] ?? 0) + 1
  return counts
}
