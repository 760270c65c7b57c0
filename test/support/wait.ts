/**
 * Waiting in tests: a pause, and polling until something is true, bounded
 * so that a test that fails, fails in time instead of hanging the run.
 */
export async function sleep (ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms))
}

/** Reads until `done(value)` or `timeoutMs` has passed; returns the last value read (the caller asserts on it). */
export async function waitFor<T> (read: () => Promise<T> | T, done: (value: T) => boolean, timeoutMs = 15_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await read()
    if (done(value) || Date.now() > deadline) return value
    await sleep(intervalMs)
  }
}

/** How long (ms) until `check()` is true, or -1 when it was not within `timeoutMs`. */
export async function timeUntil (check: () => Promise<boolean> | boolean, timeoutMs: number, intervalMs = 100): Promise<number> {
  const started = Date.now()
  const met = await waitFor(check, (value) => value, timeoutMs, intervalMs)
  return met ? Date.now() - started : -1
}
