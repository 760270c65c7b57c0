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
  constructor (private readonly capacity = 100_000) {}
  get (id: string): TicketOptionLimits | undefined { return this.limits.get(id) }
  add (id: string, limits: TicketOptionLimits): void {
    if (this.limits.size >= this.capacity) this.limits.clear()
    this.limits.set(id, limits)
  }
}
