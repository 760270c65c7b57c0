/**
 * For fault tests: a burst of purchases against a running API (undici with
 * keep-alive), following 202s through the status route until they settle, and
 * the closing check of the books in SQL (DESIGN.md invariants 1 to 3).
 */
import type pg from 'pg'
import { NOT_QUEUED } from '../../shared/purchases/sale-store'
import { unbalancedOptions } from './environment'
import { callJson, countByStatus, runPurchases, type Answer } from './load'

export type { Answer } from './load'

export const FAULT_USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

export interface BurstOptions {
  count: number
  /** requests in flight at once (also the number of keep-alive connections) */
  concurrency: number
  quantity?: number
  /**
   * A fault struck once, in the middle of the burst: `fault` starts when the
   * `after`-th answer comes (it gets that answer), and fireBurst returns only
   * once it has settled too (its error is thrown).
   */
  strike?: { after: number, fault: (answer: Answer) => Promise<unknown> }
  /** pause between two requests of one connection (ms), to stretch the burst over time */
  pauseMs?: number
}

/** `count` purchases of one user on one option; the answers in the order they came. */
export async function fireBurst (apiUrl: string, ticketOptionId: string, options: BurstOptions): Promise<Answer[]> {
  const { count, concurrency, quantity = 1, strike, pauseMs } = options
  let struck: Promise<unknown> | undefined
  const onAnswer = strike === undefined ? undefined : (answer: Answer, answered: number): void => { if (answered === strike.after) struck = strike.fault(answer) }
  const { answers } = await runPurchases({
    urls: [apiUrl], total: count, concurrency, pauseMs, onAnswer, spec: () => ({ optionId: ticketOptionId, quantity, userId: FAULT_USER }),
  })
  await struck
  return answers.sort((a, b) => a.at - b.at)
}

/** Follows every 202 through the status route until it is no longer pending, or the time is up. */
export async function settlePending (apiUrl: string, ticketOptionId: string, answers: Answer[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs
  const pending = answers.filter((a) => a.status === 202 && a.purchaseId !== undefined)
  for (const answer of pending) answer.settled = 'pending'
  while (Date.now() < deadline) {
    const open = pending.filter((a) => a.settled === 'pending')
    if (open.length === 0) return
    for (const answer of open) {
      const { status, body } = await callJson(apiUrl, 'GET', `/ticket_options/${ticketOptionId}/purchases/${answer.purchaseId as string}`)
      if (status === 200 && (body.status === 'succeeded' || body.status === 'rejected')) answer.settled = body.status
      if (status === 404) answer.settled = 'not_found'
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
}

/** The part of tap's Test the book check uses. */
interface Asserts {
  same(found: unknown, wanted: unknown, message: string): unknown
  equal(found: unknown, wanted: unknown, message: string): unknown
  ok(value: unknown, message: string): unknown
  comment(...message: unknown[]): unknown
}

export interface BookSummary {
  /** rows in purchases (voided ones included) */
  purchases: number
  succeeded: number
  rejected: number
  soldQuantity: number
  allocation: number
}

/**
 * Invariant 1 in SQL and through GET, invariant 2 (every 201 is committed as
 * succeeded, every 409 recorded as rejected, every settled 202 as reported),
 * and nothing doubled: no purchase id twice.
 * With `everyRowAnswered`, also no phantom: every recorded purchase is one a
 * client was told about (201, 409 or 202), so a 503 or a lost request bought nothing.
 */
export async function checkBooks (t: Asserts, sql: pg.Pool, apiUrl: string, ticketOptionId: string, initial: number, answers: readonly Answer[], options: { everyRowAnswered: boolean }): Promise<BookSummary> {
  t.same(await unbalancedOptions(sql), [], 'invariant 1: every option balances (allocation_audit)')
  const { rows } = await sql.query<{ id: string, status: string, quantity: number, reason: string | null }>(
    'select id::text, status, quantity, reason from purchases where ticket_option_id = $1::uuid order by seq', [ticketOptionId])
  const recorded = new Map(rows.map((r) => [r.id, r]))
  t.equal(recorded.size, rows.length, 'no purchase id recorded twice')
  const succeeded = rows.filter((r) => r.status === 'succeeded')
  const soldQuantity = succeeded.reduce((sum, r) => sum + r.quantity, 0)

  const option = await callJson(apiUrl, 'GET', `/ticket_options/${ticketOptionId}`)
  t.equal(option.body.allocation, initial - soldQuantity, 'GET allocation = initial - committed')

  const wrong: string[] = []
  for (const a of answers) {
    const row = a.purchaseId === undefined ? undefined : recorded.get(a.purchaseId)
    if (a.status === 201 && row?.status !== 'succeeded') wrong.push(`201 ${a.purchaseId ?? '?'} recorded as ${row?.status ?? 'nothing'}`)
    if (a.status === 409 && row?.status !== 'rejected') wrong.push(`409 ${a.purchaseId ?? '?'} recorded as ${row?.status ?? 'nothing'}`)
    if (a.status === 202 && a.settled !== undefined && a.settled !== 'pending' && (row?.status ?? 'not_found') !== a.settled) wrong.push(`202 ${a.purchaseId ?? '?'} settled ${a.settled}, recorded ${row?.status ?? 'nothing'}`)
  }
  t.same(wrong, [], 'every 201 committed as succeeded, every 409 recorded as rejected, every settled 202 as reported')
  t.same(answers.filter((a) => a.status >= 500 && a.status !== 503).map((a) => a.body), [], 'no 5xx other than 503')

  if (options.everyRowAnswered) {
    const told = new Set(answers.map((a) => a.purchaseId).filter((id) => id !== undefined))
    // A purchase the API answered 503 for after an ambiguous Redis failure is recorded as rejected `not_queued`.
    const voided = rows.filter((r) => !told.has(r.id) && r.status === 'rejected' && r.reason === NOT_QUEUED).length
    t.same(rows.filter((r) => !told.has(r.id) && r.reason !== NOT_QUEUED).map((r) => [r.id, r.status]), [], 'no phantom: every purchase recorded was answered 201, 409 or 202, or voided after a 503')
    t.comment(`purchases voided after an ambiguous enqueue failure (answered 503): ${voided}`)
  }
  const summary = { purchases: rows.length, succeeded: succeeded.length, rejected: rows.length - succeeded.length, soldQuantity, allocation: Number(option.body.allocation) }
  t.comment(`answers ${JSON.stringify(countByStatus(answers))}; books ${JSON.stringify(summary)}`)
  return summary
}

/** Longest gap (ms) between two consecutively applied purchases of the option, and when it started. */
export async function longestGap (sql: pg.Pool, ticketOptionId: string): Promise<{ gapMs: number, afterSeq: number }> {
  const { rows } = await sql.query<{ gap_ms: number | null, seq: string | null }>(
    `select extract(epoch from (created_at - lag(created_at) over (order by seq))) * 1000 as gap_ms, lag(seq) over (order by seq) as seq
       from purchases where ticket_option_id = $1::uuid order by gap_ms desc nulls last limit 1`, [ticketOptionId])
  return { gapMs: Number(rows[0]?.gap_ms ?? 0), afterSeq: Number(rows[0]?.seq ?? 0) }
}

/** Creates an option through a running API and returns its id. */
export async function createOptionOver (apiUrl: string, allocation: number): Promise<string> {
  const res = await callJson(apiUrl, 'POST', '/ticket_options', { name: 'fault test', desc: '', allocation })
  if (res.status !== 201) throw new Error(`create option answered ${res.status}: ${JSON.stringify(res.body)}`)
  return res.body.id as string
}

/** The same database URL with an application_name, so a test can find (and terminate) one process's backends. */
export function withApplicationName (databaseUrl: string, name: string): string {
  const url = new URL(databaseUrl)
  url.searchParams.set('application_name', name)
  return url.toString()
}
