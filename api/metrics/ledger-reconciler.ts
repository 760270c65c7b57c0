/**
 * Checks, on a schedule, that the ledger of every recently active option
 * balances (API.md "The ledger of an option"): `ticket_options_unbalanced` in
 * GET /metrics counts those that do not, and each is logged at error with its
 * figures. Only options whose tickets moved since a little before the last
 * check are read, so the check costs nothing between sales.
 */
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import { startPeriodicTask } from '../../shared/periodic-task'
import { ledgersOf, recentlyActiveOptions } from '../../shared/purchases/ledger'

export interface LedgerReconciler {
  /** one check now; resolves with the number of unbalanced options */
  check: () => Promise<number>
  stop: () => Promise<void>
}

/** Options active this long before a check are read (s): the interval and a margin for a slow or missed check. */
const LOOKBACK_FLOOR_SECONDS = 300

export function startLedgerReconciler (db: Db, log: Logger, intervalMs: number, report: (unbalanced: number) => void): LedgerReconciler {
  const lookbackSeconds = Math.max(LOOKBACK_FLOOR_SECONDS, Math.ceil((3 * intervalMs) / 1000))
  const task = startPeriodicTask(async () => {
    const ledgers = await ledgersOf(db, await recentlyActiveOptions(db, lookbackSeconds))
    const unbalanced = ledgers.filter((l) => !l.balanced)
    for (const ledger of unbalanced) log.error({ ledger }, 'ticket option does not balance: initial_allocation != available + held + sold')
    report(unbalanced.length)
    return unbalanced.length
  }, intervalMs, (err) => { log.warn({ err }, 'could not check the ledgers') })
  return { check: task.run, stop: task.stop }
}
