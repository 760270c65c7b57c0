/**
 * The ledger of an option (API.md "The ledger of an option", DESIGN.md
 * invariant 1): where every ticket is, computed from the stored records, never
 * restated. `balanced` is initial_allocation = available + held + sold, where
 * available is the option's counter, held the tickets of its active holds and
 * sold those of its succeeded purchases not cancelled; the option's own count
 * of held tickets must agree with its holds too.
 */
import type { Db } from '../db'

export interface Ledger {
  ticket_option_id: string
  initial_allocation: number
  available: number
  held: number
  sold: number
  /** tickets given back by cancellations */
  cancelled: number
  balanced: boolean
}

interface LedgerRow {
  ticket_option_id: string
  initial_allocation: number
  available: number
  held_counter: number
  held: string
  sold: string
  cancelled: string
}

/**
 * Ledgers of the given options (missing ids are left out). Each table is
 * summed once for all the options, grouped: at worst one pass over it,
 * however many options are asked for (a sum per option, as a lateral join,
 * could become a pass over the whole table per option when PostgreSQL's
 * statistics lag behind a sale).
 */
export async function ledgersOf (db: Db, ticketOptionIds: readonly string[]): Promise<Ledger[]> {
  if (ticketOptionIds.length === 0) return []
  const { rows } = await db.query<LedgerRow>(
    `with sold as (
       select ticket_option_id,
              sum(quantity) filter (where cancelled_at is null) as sold,
              sum(quantity) filter (where cancelled_at is not null) as cancelled
         from purchases where ticket_option_id = any($1::uuid[]) and status = 'succeeded'
        group by ticket_option_id
     ), held as (
       select ticket_option_id, sum(quantity) as held
         from reservations where ticket_option_id = any($1::uuid[]) and status = 'held'
        group by ticket_option_id
     )
     select o.id as ticket_option_id, o.initial_allocation, o.allocation as available, o.held as held_counter,
            coalesce(h.held, 0) as held, coalesce(p.sold, 0) as sold, coalesce(p.cancelled, 0) as cancelled
       from ticket_options o
       left join sold p on p.ticket_option_id = o.id
       left join held h on h.ticket_option_id = o.id
      where o.id = any($1::uuid[])`,
    [ticketOptionIds]
  )
  return rows.map((row) => {
    const held = Number(row.held)
    const sold = Number(row.sold)
    return {
      ticket_option_id: row.ticket_option_id,
      initial_allocation: row.initial_allocation,
      available: row.available,
      held,
      sold,
      cancelled: Number(row.cancelled),
      balanced: row.available >= 0 && row.held_counter === held && row.initial_allocation === row.available + held + sold,
    }
  })
}

export async function ledgerOf (db: Db, ticketOptionId: string): Promise<Ledger | null> {
  return (await ledgersOf(db, [ticketOptionId]))[0] ?? null
}

/** An option whose tickets moved recently: when (its `updated_at`, ms since epoch) and how long ago (ms, by PostgreSQL's clock). */
export interface RecentChange {
  ticketOptionId: string
  updatedAt: number
  idleMs: number
}

/** Options whose tickets moved in the last `seconds` (a sale, a hold, an expiry, a cancellation), most recent first. */
export async function recentlyChangedOptions (db: Db, seconds: number, limit = 10_000): Promise<RecentChange[]> {
  const { rows } = await db.query<{ id: string, updated_ms: number, idle_ms: number }>(
    `select id, extract(epoch from updated_at) * 1000 as updated_ms, extract(epoch from now() - updated_at) * 1000 as idle_ms
       from ticket_options where updated_at > now() - make_interval(secs => $1::integer)
      order by updated_at desc limit $2::integer`,
    [seconds, limit]
  )
  return rows.map((r) => ({ ticketOptionId: r.id, updatedAt: Number(r.updated_ms), idleMs: Number(r.idle_ms) }))
}
