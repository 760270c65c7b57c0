/**
 * Expires holds nobody confirmed (API.md "Holds": at most 5 s after
 * `expires_at`, with no request needed, whatever restarted meanwhile). The
 * deadlines are in PostgreSQL, so a sweep every HOLD_SWEEP_MS (1 s) finds
 * every hold past its time, including those of a worker or API that died:
 * nothing in memory or in Redis has to survive for a hold to expire. Every
 * worker replica sweeps; each option is expired under its row lock, so they
 * never expire a hold twice, and a sweep is ordered with the option's batches.
 */
import type { Logger } from 'pino'
import type { Db } from '../shared/db'
import { startPeriodicTask } from '../shared/periodic-task'
import { expireHolds, optionsWithExpiredHolds } from '../shared/purchases/sale-store'

export interface HoldSweeper {
  /** one sweep now; resolves with the number of holds expired */
  sweep: () => Promise<number>
  stop: () => Promise<void>
}

export function startHoldSweeper (db: Db, log: Logger, intervalMs: number): HoldSweeper {
  const task = startPeriodicTask(async () => {
    let expired = 0
    for (const ticketOptionId of await optionsWithExpiredHolds(db)) {
      const { holds, tickets } = await expireHolds(db, ticketOptionId)
      if (holds > 0) log.info({ ticketOptionId, holds, tickets }, 'holds expired, their tickets are available again')
      expired += holds
    }
    return expired
  }, intervalMs, (err) => { log.warn({ err }, 'could not expire holds') })
  return { sweep: task.run, stop: task.stop }
}
