/**
 * The limits of options known to exist, so a request asks PostgreSQL once per
 * option and process. Options are never deleted and their limits never
 * change, so a positive answer can be kept; a negative one never is (the
 * option may be created next). Owned by the sale service (sale-service.ts);
 * nothing else writes into it.
 */
import type { TicketOptionLimits } from '../../shared/ticket-options'

export class KnownOptions {
  private readonly limits = new Map<string, TicketOptionLimits>()
  /**
   * Reads in flight. The first burst on an option this process has not seen
   * (a sale opening: every request at once) asks PostgreSQL once, not once
   * per request: on the bench's spread, 256 reads queued in front of the
   * first sales' transactions and made the slowest 1 % of the run.
   */
  private readonly reading = new Map<string, Promise<TicketOptionLimits | null>>()

  constructor (private readonly capacity = 100_000) {}

  /** The option's limits when this process knows them (undefined: it does not, which says nothing of the option). */
  known (id: string): TicketOptionLimits | undefined {
    return this.limits.get(id)
  }

  /** The option's limits, from memory or from `read` (one read at a time per option); null when there is no such option. */
  async lookup (id: string, read: (id: string) => Promise<TicketOptionLimits | null>): Promise<TicketOptionLimits | null> {
    const known = this.limits.get(id)
    if (known !== undefined) return known
    let pending = this.reading.get(id)
    if (pending === undefined) {
      pending = read(id).then((limits) => {
        if (limits !== null) this.add(id, limits)
        return limits
      }).finally(() => { this.reading.delete(id) })
      this.reading.set(id, pending)
    }
    return await pending
  }

  /** An option created here, or read: its limits, for good. */
  add (id: string, limits: TicketOptionLimits): void {
    if (this.limits.size >= this.capacity) this.limits.clear()
    this.limits.set(id, limits)
  }
}
