/**
 * Purchases in PostgreSQL: applying a batch of queued purchases to one option
 * under its row lock, and reading a recorded outcome.
 * The rule that decides each outcome is `allocate` in ./allocation.ts.
 */
import { allocate } from './allocation'
import type { Db, DbClient } from './db'

export type PurchaseStatus = 'succeeded' | 'rejected'
export const NOT_ENOUGH_TICKETS = 'not_enough_tickets'

/** A recorded purchase, as the worker publishes it and the API answers with it. */
export interface PurchaseRecord {
  /** uuid; also the BullMQ job id */
  id: string
  ticket_option_id: string
  user_id: string
  quantity: number
  status: PurchaseStatus
  /** for a rejection: `not_enough_tickets` */
  reason: string | null
  /** for a rejection: tickets left when it was decided */
  available: number | null
  /** ISO 8601 */
  created_at: string
}

/** What a worker asks to apply: the data of one queued job. */
export interface PurchaseRequest {
  purchaseId: string
  ticketOptionId: string
  userId: string
  quantity: number
  requestId: string
  enqueuedAt: number
}

export interface AppliedBatch {
  /** one outcome per request, in the order given */
  outcomes: PurchaseRecord[]
  /** how many of them were decided now (the rest had been recorded before) */
  newlyApplied: number
}

const RECORD_COLUMNS = `id, ticket_option_id, user_id, quantity, status, reason, available,
  to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as created_at`

/** Thrown when a job names an option that does not exist; retrying cannot help. */
export class UnknownTicketOptionError extends Error {
  override name = 'UnknownTicketOptionError'
}

/**
 * Applies purchases of ONE option in arrival order, inside the caller's
 * transaction. Purchases already recorded (a redelivered job) keep their
 * recorded outcome and buy nothing more.
 */
export async function applyPurchases (client: DbClient, ticketOptionId: string, requests: readonly PurchaseRequest[]): Promise<AppliedBatch> {
  const locked = await client.query<{ allocation: number }>(
    'select allocation from ticket_options where id = $1::uuid for update',
    [ticketOptionId],
  )
  const option = locked.rows[0]
  if (option === undefined) throw new UnknownTicketOptionError(`ticket option ${ticketOptionId} does not exist`)

  const ids = requests.map((r) => r.purchaseId)
  const existing = await client.query<PurchaseRecord>(
    `select ${RECORD_COLUMNS} from purchases where id = any($1::uuid[])`,
    [ids],
  )
  const recorded = new Map(existing.rows.map((row) => [row.id, row]))
  // A purchase id may appear twice in one batch only through a bug upstream; apply it once.
  const fresh = requests.filter((r, i) => !recorded.has(r.purchaseId) && ids.indexOf(r.purchaseId) === i)
  if (fresh.some((r) => r.ticketOptionId !== ticketOptionId)) throw new Error('a batch must hold purchases of one option')

  if (fresh.length > 0) {
    const { decisions, remaining } = allocate(option.allocation, fresh)
    const inserted = await client.query<PurchaseRecord>(
      `insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, available, request_id, enqueued_at)
       select p.id, $1::uuid, p.user_id, p.quantity, p.status,
              case when p.status = 'rejected' then '${NOT_ENOUGH_TICKETS}' end,
              case when p.status = 'rejected' then p.available end,
              p.request_id, to_timestamp(p.enqueued_at / 1000.0)
         from unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::integer[], $7::text[], $8::bigint[])
              with ordinality as p(id, user_id, quantity, status, available, request_id, enqueued_at, ord)
        order by p.ord
       returning ${RECORD_COLUMNS}`,
      [
        ticketOptionId,
        fresh.map((r) => r.purchaseId),
        fresh.map((r) => r.userId),
        fresh.map((r) => r.quantity),
        decisions.map((d) => d.status),
        decisions.map((d) => d.availableBefore),
        fresh.map((r) => r.requestId),
        fresh.map((r) => r.enqueuedAt),
      ],
    )
    for (const row of inserted.rows) recorded.set(row.id, row)

    const sold = fresh.filter((_, i) => decisions[i]?.status === 'succeeded')
    if (sold.length > 0) {
      // One statement for all tickets of the batch: quantity rows per purchase.
      await client.query(
        `insert into tickets (purchase_id, ticket_option_id)
         select p.id, $1::uuid
           from unnest($2::uuid[], $3::integer[]) as p(id, quantity),
                generate_series(1, p.quantity)`,
        [ticketOptionId, sold.map((r) => r.purchaseId), sold.map((r) => r.quantity)],
      )
      await client.query(
        'update ticket_options set allocation = $2::integer, updated_at = now() where id = $1::uuid',
        [ticketOptionId, remaining],
      )
    }
  }

  return {
    outcomes: requests.map((r) => recorded.get(r.purchaseId) as PurchaseRecord),
    newlyApplied: fresh.length,
  }
}

/** The recorded outcome of a purchase, or null when it has not been applied (yet). */
export async function findPurchase (db: Db | DbClient, ticketOptionId: string, purchaseId: string): Promise<PurchaseRecord | null> {
  const { rows } = await db.query<PurchaseRecord>(
    `select ${RECORD_COLUMNS} from purchases where id = $1::uuid and ticket_option_id = $2::uuid`,
    [purchaseId, ticketOptionId],
  )
  return rows[0] ?? null
}
