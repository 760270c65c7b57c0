/**
 * Deletes expired idempotency keys now and then. Expired keys are already
 * ignored and reclaimed when reused (shared/idempotency-keys.ts); this only
 * keeps the table from growing forever. Every worker replica sweeps; the
 * delete is idempotent and bounded per run, so they do not get in each
 * other's way.
 */
import type { Logger } from 'pino'
import type { Db } from '../shared/db'
import { deleteExpiredIdempotencyKeys } from '../shared/idempotency-keys'
import { startPeriodicTask } from '../shared/periodic-task'

/** Often enough that the table stays near one TTL's worth of keys; rare enough to cost nothing. */
export const KEY_SWEEP_INTERVAL_MS = 10 * 60_000

export interface KeySweeper {
  /** one sweep now; resolves with the number of keys deleted */
  sweep: () => Promise<number>
  stop: () => Promise<void>
}

export function startKeySweeper (db: Db, log: Logger, intervalMs = KEY_SWEEP_INTERVAL_MS): KeySweeper {
  const task = startPeriodicTask(async () => {
    let total = 0
    // Bounded batches, so one sweep never holds a long transaction.
    for (let deleted = -1; deleted !== 0 && total < 1_000_000;) {
      deleted = await deleteExpiredIdempotencyKeys(db)
      total += deleted
    }
    if (total > 0) log.info({ deleted: total }, 'expired idempotency keys deleted')
    return total
  }, intervalMs, (err) => { log.warn({ err }, 'could not delete expired idempotency keys') })
  return { sweep: task.run, stop: task.stop }
}
