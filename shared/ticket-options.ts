/**
 * Ticket options in PostgreSQL. Lookups return null for "no such option";
 * callers map that to a 404.
 */
import type { Db } from './db'

/** A row of `ticket_options` as the API shows it. */
export interface TicketOption {
  /** uuid */
  id: string
  name: string
  desc: string
  /** tickets still available */
  allocation: number
  /** most tickets one purchase or hold may take; null: no limit */
  max_per_purchase: number | null
  /** most tickets one user may have bought (not cancelled) and held at once; null: no limit */
  max_per_user: number | null
}

export interface NewTicketOption {
  name: string
  desc: string
  allocation: number
  maxPerPurchase: number | null
  maxPerUser: number | null
}

/** An option's limits, which never change after it is created. */
export interface TicketOptionLimits {
  maxPerPurchase: number | null
  maxPerUser: number | null
}

const COLUMNS = 'id, name, "desc", allocation, max_per_purchase, max_per_user'

export async function createTicketOption (db: Db, input: NewTicketOption): Promise<TicketOption> {
  const { rows } = await db.query<TicketOption>(
    `insert into ticket_options (name, "desc", initial_allocation, allocation, max_per_purchase, max_per_user)
     values ($1, $2, $3::integer, $3::integer, $4::integer, $5::integer)
     returning ${COLUMNS}`,
    [input.name, input.desc, input.allocation, input.maxPerPurchase, input.maxPerUser]
  )
  return rows[0] as TicketOption
}

export async function getTicketOption (db: Db, id: string): Promise<TicketOption | null> {
  const { rows } = await db.query<TicketOption>(`select ${COLUMNS} from ticket_options where id = $1::uuid`, [id])
  return rows[0] ?? null
}

/** The option's limits, or null when there is no such option. */
export async function ticketOptionLimits (db: Db, id: string): Promise<TicketOptionLimits | null> {
  const { rows } = await db.query<{ max_per_purchase: number | null, max_per_user: number | null }>(
    'select max_per_purchase, max_per_user from ticket_options where id = $1::uuid',
    [id]
  )
  const row = rows[0]
  return row === undefined ? null : { maxPerPurchase: row.max_per_purchase, maxPerUser: row.max_per_user }
}

/** Names of several options at once (the dashboard labels queues with them). */
export async function ticketOptionNames (db: Db, ids: readonly string[]): Promise<Map<string, string>> {
  const { rows } = await db.query<{ id: string, name: string }>(
    'select id, name from ticket_options where id = any($1::uuid[])',
    [ids]
  )
  return new Map(rows.map((r) => [r.id, r.name]))
}
