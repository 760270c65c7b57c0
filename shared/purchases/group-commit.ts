/**
 * Group commit across options: the batches of different options that are
 * ready at the same time share one transaction on one connection. Each
 * option's queue is serial, so a process holds at most one batch per option,
 * and the batches of a group never touch the same row. The connection
 * pipelines (shared/db.ts), so the group's statements go out together: a
 * group of ten options costs about the round trips and the commit of one
 * batch, not ten (DESIGN.md "Where the time goes": with many options each
 * batch holds one or two purchases and every one paid a whole transaction).
 *
 * At most `maxInFlight` groups run at once; batches that come meanwhile wait
 * and go as the next group. A batch alone runs in a transaction of its own,
 * as before. Nothing is reported before COMMIT: a group that fails to commit
 * fails each of its batches with that error (an outage: each is retried). A
 * batch that fails (PostgreSQL refused a statement, which aborts the whole
 * transaction, or anything else) rolls the group back, so no batch is ever
 * half-written: the failed batch gets its error (the processor then applies
 * its requests one at a time), and every other batch is applied again in a
 * transaction of its own.
 */
import { AsyncResource } from 'node:async_hooks'
import pg from 'pg'
import { withTransaction, type Db, type DbClient } from '../db'

/** Work of one batch inside a transaction; it may be run again (it reads what it needs inside). */
export type TransactionWork<T> = (client: DbClient) => Promise<T>

interface Waiting {
  work: TransactionWork<unknown>
  resolve: (result: unknown) => void
  reject: (err: unknown) => void
}

/** SQLSTATE of a statement sent after another one failed in the same transaction. */
const IN_FAILED_TRANSACTION = '25P02'

/** A batch of the group failed: whose error it was is sorted out after the rollback. */
class GroupFailed extends Error {
  override name = 'GroupFailed'
  constructor (readonly results: Array<PromiseSettledResult<unknown>>) {
    super('a batch of the group failed')
  }
}

const refusedByPostgres = (err: unknown): err is pg.DatabaseError => err instanceof pg.DatabaseError

export class GroupCommit {
  private waiting: Waiting[] = []
  private inFlight = 0
  private scheduled = false
  /** Groups run and the batches they held (read by the tests). */
  readonly stats = { groups: 0, batches: 0, largest: 0 }

  constructor (private readonly db: Db, private readonly maxInFlight: number) {
    if (maxInFlight < 1) throw new Error('maxInFlight must be at least 1')
  }

  /** Whether no group runs or waits: a batch now would be alone. */
  get idle (): boolean {
    return this.inFlight === 0 && this.waiting.length === 0
  }

  /** Runs `work` in a transaction, with the batches of other options that are ready now. */
  async run<T> (work: TransactionWork<T>): Promise<T> {
    return await new Promise<T>((resolve, reject) => {
      // The work runs in its caller's async context (its trace span and logs), whoever starts the group.
      const context = new AsyncResource('GroupCommit')
      this.waiting.push({ work: async (client) => await context.runInAsyncScope(work, null, client), resolve: resolve as (result: unknown) => void, reject })
      this.schedule()
    })
  }

  private schedule (): void {
    if (this.scheduled || this.inFlight >= this.maxInFlight || this.waiting.length === 0) return
    this.scheduled = true
    // The batches that become ready in this turn of the event loop join the group.
    setImmediate(() => {
      this.scheduled = false
      if (this.inFlight >= this.maxInFlight || this.waiting.length === 0) return
      const group = this.waiting
      this.waiting = []
      this.inFlight++
      this.commit(group).finally(() => {
        this.inFlight--
        this.schedule()
      })
    })
  }

  private async commit (group: Waiting[]): Promise<void> {
    this.stats.groups++
    this.stats.batches += group.length
    this.stats.largest = Math.max(this.stats.largest, group.length)
    if (group.length === 1) {
      const [only] = group as [Waiting]
      await withTransaction(this.db, only.work).then(only.resolve, only.reject)
      return
    }
    let results: Array<PromiseSettledResult<unknown>>
    try {
      results = await withTransaction(this.db, async (client) => {
        const settled = await Promise.allSettled(group.map(async ({ work }) => await work(client)))
        if (settled.some((r) => r.status === 'rejected')) throw new GroupFailed(settled)
        return settled
      })
    } catch (err) {
      if (!(err instanceof GroupFailed)) {
        for (const { reject } of group) reject(err)
        return
      }
      await this.sortOut(group, err.results)
      return
    }
    results.forEach((result, i) => { (group[i] as Waiting).resolve((result as PromiseFulfilledResult<unknown>).value) })
  }

  /**
   * After a rolled-back group: a batch that failed gets its error; the others
   * (done, or refused only because the transaction had failed) run again,
   * each alone.
   */
  private async sortOut (group: Waiting[], results: Array<PromiseSettledResult<unknown>>): Promise<void> {
    await Promise.all(group.map(async ({ work, resolve, reject }, i) => {
      const result = results[i] as PromiseSettledResult<unknown>
      if (result.status === 'rejected' && !(refusedByPostgres(result.reason) && result.reason.code === IN_FAILED_TRANSACTION)) {
        reject(result.reason)
        return
      }
      await withTransaction(this.db, work).then(resolve, reject)
    }))
  }
}
