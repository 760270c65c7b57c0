/**
 * Natural batching for one option's calls to the queue store: at most one
 * call per option is in flight; requests that arrive meanwhile (or in the same
 * turn of the event loop as the first) gather and go as the next call, in the
 * order they arrived. Under load a sale then costs one round trip per batch,
 * not per buyer, and the store sees one option's calls in the order the API
 * made them, which keeps each option's line numbers and queue order the same
 * on a store with a pool of connections (PostgreSQL) as on Redis's one.
 * A batch is sent in the async context of its first caller (not of whichever
 * call came before it), so its trace span and logs belong to that request:
 * the setImmediate of a key with nothing in flight carries its caller's
 * context itself; a batch that waits behind one in flight keeps its first
 * caller's in an AsyncResource (made only then: a lone buyer's every call
 * would pay for one).
 */
import { AsyncResource } from 'node:async_hooks'

interface Waiting<T, R> {
  item: T
  resolve: (result: R) => void
  reject: (err: unknown) => void
  /** set on the first of a batch that waits behind one in flight: that caller's async context, to send the batch in */
  context?: AsyncResource
}

interface KeyState<T, R> {
  waiting: Array<Waiting<T, R>>
  sending: boolean
}

export class BatchedCalls<T, R> {
  private readonly keys = new Map<string, KeyState<T, R>>()

  /** `send` gets the gathered items of a key, oldest first, and returns one result per item, in order. */
  constructor (private readonly send: (key: string, items: T[]) => Promise<R[]>) {}

  call (key: string, item: T): Promise<R> {
    return new Promise<R>((resolve, reject) => {
      let state = this.keys.get(key)
      if (state === undefined) {
        state = { waiting: [], sending: false }
        this.keys.set(key, state)
      }
      const first = state.waiting.length === 0
      // An AsyncResource, not AsyncResource.bind: bind builds two deprecation wrappers per call (Node 20), 2 % of the API's CPU in a sale.
      state.waiting.push(first && state.sending ? { item, resolve, reject, context: new AsyncResource('BatchedCalls') } : { item, resolve, reject })
      // The first of a batch waits for the end of this turn, so the requests of the same turn join it.
      if (!state.sending && state.waiting.length === 1) setImmediate(() => { this.flush(key) })
    })
  }

  /** Keys with a call in flight or waiting (nothing is kept for an idle key). */
  get size (): number {
    return this.keys.size
  }

  private flush (key: string): void {
    const state = this.keys.get(key)
    if (state === undefined || state.sending) return
    const batch = state.waiting
    if (batch.length === 0) {
      this.keys.delete(key)
      return
    }
    state.waiting = []
    state.sending = true
    const context = batch[0]?.context
    const run = context === undefined ? (fn: () => void) => { fn() } : (fn: () => void) => { context.runInAsyncScope(fn) }
    // One reaction for either outcome, not a `finally` after it: a finally costs a promise and two closures more, on every call of a lone buyer.
    const next = (): void => {
      state.sending = false
      this.flush(key)
    }
    run(() => {
      this.send(key, batch.map((w) => w.item)).then((results) => {
        batch.forEach((w, i) => { w.resolve(results[i] as R) })
        next()
      }, (err: unknown) => {
        for (const w of batch) w.reject(err)
        next()
      })
    })
  }
}
