/**
 * Checks, on a schedule, that the ledger of every recently active option
 * balances (API.md "The ledger of an option"): `ticket_options_unbalanced` in
 * GET /metrics counts those that do not, and each is logged at error with its
 * figures.
 *
 * A check reads every purchase of an option, so each option is read once per
 * change, not on every tick: once it has been quiet for an interval (its
 * `updated_at` unchanged since it was last read), or, while it keeps selling,
 * once every STALE_INTERVALS intervals. Measured on the bench before this: a
 * tick over every option active in the last five minutes read each purchase
 * again every 30 s and took PostgreSQL for seconds during a sale.
 */
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import { startPeriodicTask } from '../../shared/periodic-task'
import { ledgersOf, recentlyChangedOptions } from '../../shared/purchases/ledger'

export interface LedgerReconciler {
  /** one check now; resolves with the number of unbalanced options */
  check: () => Promise<number>
  stop: () => Promise<void>
}

/** Options active this long before a check are read (s): the interval and a margin for a slow or missed check. */
const LOOKBACK_FLOOR_SECONDS = 300
/** An option that never goes quiet is still read this many intervals after its last check. */
export const STALE_INTERVALS = 10

interface Checked {
  /** the option's `updated_at` when it was read (ms) */
  updatedAt: number
  /** when it was read (ms, this process's clock) */
  at: number
}

export function startLedgerReconciler (db: Db, log: Logger, intervalMs: number, report: (unbalanced: number) => void): LedgerReconciler {
  const lookbackSeconds = Math.max(LOOKBACK_FLOOR_SECONDS, Math.ceil((3 * intervalMs) / 1000))
  const checked = new Map<string, Checked>()
  const unbalanced = new Set<string>()
  const task = startPeriodicTask(async () => {
    const now = Date.now()
    const changed = await recentlyChangedOptions(db, lookbackSeconds)
    const due = changed.filter(({ ticketOptionId, updatedAt, idleMs }) => {
      const last = checked.get(ticketOptionId)
      if (last?.updatedAt === updatedAt) return false
      return last === undefined || idleMs >= intervalMs || now - last.at >= STALE_INTERVALS * intervalMs
    })
    for (const ledger of await ledgersOf(db, due.map((c) => c.ticketOptionId))) {
      if (ledger.balanced) {
        unbalanced.delete(ledger.ticket_option_id)
      } else {
        unbalanced.add(ledger.ticket_option_id)
        log.error({ ledger }, 'ticket option does not balance: initial_allocation != available + held + sold')
      }
    }
    for (const { ticketOptionId, updatedAt } of due) checked.set(ticketOptionId, { updatedAt, at: now })
    // Forget options that left the window: bounded by the options active in it.
    const inWindow = new Set(changed.map((c) => c.ticketOptionId))
    for (const id of checked.keys()) if (!inWindow.has(id)) checked.delete(id)
    for (const id of unbalanced) if (!inWindow.has(id)) unbalanced.delete(id)
    report(unbalanced.size)
    return unbalanced.size
  }, intervalMs, (err) => { log.warn({ err }, 'could not check the ledgers') })
  return { check: task.run, stop: task.stop }
}
