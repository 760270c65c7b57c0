/**
 * A task that runs every `intervalMs` in the background: one run at a time (a
 * tick, or a call of `run`, during a slow run joins it), failures of the timer's
 * runs reported to `onError` and never thrown out of the timer, and a timer
 * that does not keep the process alive. `stop` waits for a run in progress.
 * The housekeeping of both processes uses it: expiring holds and idempotency
 * keys (worker), checking the ledgers (API).
 */
export interface PeriodicTask<T> {
  /** one run now (or the one in progress) */
  run: () => Promise<T>
  stop: () => Promise<void>
}

export function startPeriodicTask<T> (task: () => Promise<T>, intervalMs: number, onError: (err: unknown) => void): PeriodicTask<T> {
  let running: Promise<T> | undefined
  const run = async (): Promise<T> => {
    running ??= task().finally(() => { running = undefined })
    return await running
  }
  const timer = setInterval(() => { run().catch(onError) }, intervalMs)
  timer.unref()
  return {
    run,
    async stop () {
      clearInterval(timer)
      await running?.catch(() => undefined)
    },
  }
}
