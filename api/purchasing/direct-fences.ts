/**
 * The fence of an option's direct lease (direct-sales.ts). The API that holds
 * a lease applies the option's next purchases on it without asking Redis
 * again, each as one statement (sale-store.ts applyPurchasesAtOnce) that
 * first looks at `direct_fences`. A request queued while that lease lives must
 * not be passed: before its job is added, it records the lease's token there
 * (the take of its line number said the lease lives and its fence is not up:
 * shared/queues/direct-lease.ts). The holder's next statement then writes
 * nothing, and its requests queue behind this one.
 *
 * Once recorded, Redis is told (markFenced), so later takes of the same lease
 * need not write again; one that comes in between writes the same row again,
 * which changes nothing. Requests raising one lease's fence at once share one
 * write.
 */
import type { Logger } from 'pino'
import type { Db } from '../../shared/db'
import type { QueueBackend } from '../../shared/queues/queue-backend'

export class DirectFences {
  /** The write in flight per option and lease token. */
  private readonly raising = new Map<string, Promise<void>>()

  constructor (
    private readonly db: Db,
    private readonly backend: Pick<QueueBackend, 'markFenced'>,
    private readonly log: Logger
  ) {}

  /** Resolves once the fence of the lease `token` is committed; throws when PostgreSQL could not record it. */
  async raise (ticketOptionId: string, token: string): Promise<void> {
    const key = `${ticketOptionId} ${token}`
    let raising = this.raising.get(key)
    if (raising === undefined) {
      raising = this.record(ticketOptionId, token).finally(() => { this.raising.delete(key) })
      this.raising.set(key, raising)
    }
    await raising
  }

  private async record (ticketOptionId: string, token: string): Promise<void> {
    await this.db.query({
      name: 'direct-fence-raise',
      text: `insert into direct_fences (ticket_option_id, token) values ($1::uuid, $2::text)
             on conflict (ticket_option_id) do update set token = excluded.token`,
      values: [ticketOptionId, token],
    })
    // Only a saving: a take that misses the mark raises the fence again.
    this.backend.markFenced(ticketOptionId, token).catch((err: unknown) => {
      this.log.warn({ err, ticketOptionId }, 'could not mark the direct fence as up')
    })
  }
}
