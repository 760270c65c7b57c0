/**
 * Reads, on scrape, how many tickets the busiest options have available,
 * held and sold, for `ticket_option_tickets` in GET /metrics: what the
 * Grafana dashboard draws, and its sell-out estimate (available divided by
 * the rate at which `sold` grows). Bounded like the queue depths: only the
 * `top` options whose tickets moved most recently (within `windowSeconds`),
 * one indexed query on ticket_options (no sum over purchases: the ledger's
 * invariant gives sold = initial_allocation - available - held), and a time
 * limit, so an outage makes /metrics report `ticket_stock_up 0` instead of
 * hanging.
 */
import type { QueryConfig } from 'pg'
import type { Db } from '../../shared/db'

/** Options with series of their own. */
export const TICKET_STOCK_TOP = 10
/** An option counts as busy for this long after its tickets last moved (s). */
export const TICKET_STOCK_WINDOW_SECONDS = 900
/** A scrape waits this long for PostgreSQL at most (ms). */
export const TICKET_STOCK_TIMEOUT_MS = 500

export interface OptionStock {
  ticketOptionId: string
  available: number
  held: number
  sold: number
}

export class TicketStock {
  constructor (
    private readonly db: Db,
    private readonly top = TICKET_STOCK_TOP,
    private readonly windowSeconds = TICKET_STOCK_WINDOW_SECONDS,
    private readonly timeoutMs = TICKET_STOCK_TIMEOUT_MS
  ) {}

  /** The busiest options' stock, most recently active first; rejects on an error or after `timeoutMs`. */
  async read (): Promise<OptionStock[]> {
    const { rows } = await this.db.query<{ id: string, available: number, held: number, sold: number }>({
      text: `select id, allocation as available, held, initial_allocation - allocation - held as sold
               from ticket_options
              where updated_at > now() - make_interval(secs => $1::integer)
              order by updated_at desc
              limit $2::integer`,
      values: [this.windowSeconds, this.top],
      // pg gives the client back as broken when this passes, so a hung server cannot pin the pool.
      query_timeout: this.timeoutMs,
    } as QueryConfig)
    return rows.map((r) => ({ ticketOptionId: r.id, available: Number(r.available), held: Number(r.held), sold: Number(r.sold) }))
  }
}
