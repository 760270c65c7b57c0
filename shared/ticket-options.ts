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
}

export interface NewTicketOption {
  name: string
  desc: string
  allocation: number
}

export async function createTicketOption (db: Db, input: NewTicketOption): Promise<TicketOption> {
  const { rows } = await db.query<TicketOption>(
    `insert into ticket_options (name, "desc", initial_allocation, allocation)
     values ($1, $2, $3::integer, $3::integer)
     returning id, name, "desc", allocation`,
    [input.name, input.desc, input.allocation]
  )
  return rows[0] as TicketOption
}

export async function getTicketOption (db: Db, id: string): Promise<TicketOption | null> {
  const { rows } = await db.query<TicketOption>(
    'select id, name, "desc", allocation from ticket_options where id = $1::uuid',
    [id]
  )
  return rows[0] ?? null
}

export async function ticketOptionExists (db: Db, id: string): Promise<boolean> {
  const { rowCount } = await db.query('select 1 from ticket_options where id = $1::uuid', [id])
  return rowCount === 1
}

/** Names of several options at once (the dashboard labels queues with them). */
export async function ticketOptionNames (db: Db, ids: readonly string[]): Promise<Map<string, string>> {
  const { rows } = await db.query<{ id: string, name: string }>(
    'select id, name from ticket_options where id = any($1::uuid[])',
    [ids]
  )
  return new Map(rows.map((r) => [r.id, r.name]))
}
