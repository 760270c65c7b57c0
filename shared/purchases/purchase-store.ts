/**
 * Purchases in PostgreSQL: applying a batch of queued purchases to one option
 * under its row lock, and reading a recorded outcome.
 * The rule that decides each outcome is `allocate` in ./allocation.ts.
 */
import { allocate, type AllocationRejection } from './allocation'
import type { PurchaseRequest } from './purchase-request'
import { withTransaction, type Db, type DbClient } from '../db'

export type PurchaseStatus = 'succeeded' | 'rejected'
/** Reason of a purchase the API answered 503 for while its job may have reached Redis (see `voidUnqueuedPurchase`). */
export const NOT_QUEUED = 'not_queued'
/** Reason of a purchase PostgreSQL refused to apply (see `rejectUnprocessable`). */
export const UNPROCESSABLE = 'unprocessable'
/** Why a purchase was rejected; each maps to an error code in shared/error-catalogue.ts. */
export type RejectionReason = AllocationRejection | typeof NOT_QUEUED | typeof UNPROCESSABLE

/** A recorded purchase, as the worker publishes it and the API answers with it. */
export interface PurchaseRecord {
  /** uuid; also the BullMQ job id */
  id: string
  ticket_option_id: string
  user_id: string
  quantity: number
  status: PurchaseStatus
  /** for a rejection: a RejectionReason */
  reason: string | null
  /** for a rejection: tickets left when it was decided */
  available: number | null
  /** ISO 8601 */
  created_at: string
}

export interface AppliedBatch {
  /** one outcome per request, in the order given */
  outcomes: PurchaseRecord[]
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
 * recorded outcome and buy nothing more. `maxQuantity` is MAX_TICKETS_PER_PURCHASE.
 */
export async function applyPurchases (client: DbClient, ticketOptionId: string, requests: readonly PurchaseRequest[], maxQuantity: number): Promise<AppliedBatch> {
  const locked = await client.query<{ allocation: number }>(
    'select allocation from ticket_options where id = $1::uuid for update',
    [ticketOptionId]
  )
  const option = locked.rows[0]
  if (option === undefined) throw new UnknownTicketOptionError(`ticket option ${ticketOptionId} does not exist`)

  // A statement of its own, after the lock: in READ COMMITTED it then sees
  // everything committed by whoever held the lock before us (a statement that
  // locks and reads at once reads with the snapshot from before its wait).
  const ids = requests.map((r) => r.purchaseId)
  const existing = await client.query<PurchaseRecord>(
    `select ${RECORD_COLUMNS} from purchases where id = any($1::uuid[])`,
    [ids]
  )
  const recorded = new Map(existing.rows.map((row) => [row.id, row]))
  // A purchase id may appear twice in one batch only through a bug upstream; apply it once.
  const fresh = requests.filter((r, i) => !recorded.has(r.purchaseId) && ids.indexOf(r.purchaseId) === i)
  if (fresh.some((r) => r.ticketOptionId !== ticketOptionId)) throw new Error('a batch must hold purchases of one option')

  if (fresh.length > 0) {
    const { decisions, remaining } = allocate(option.allocation, fresh, maxQuantity)
    const sold = fresh.filter((_, i) => decisions[i]?.status === 'succeeded')
    // One statement writes the whole batch: the purchases, their tickets
    // (quantity rows per sold purchase) and the option's new allocation
    // (left alone when nothing was sold). A batch takes 5 round trips with
    // begin/commit instead of 7 (bench: each costs a socket write and a wake-up
    // on both sides). Tickets may reference purchases inserted by the sibling
    // CTE: foreign keys are checked at the end of the statement.
    const inserted = await client.query<PurchaseRecord>(
      `with inserted as (
         insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, available, request_id, enqueued_at)
         select p.id, $1::uuid, p.user_id, p.quantity, p.status, p.reason,
                case when p.status = 'rejected' then p.available end,
                p.request_id, to_timestamp(p.enqueued_at / 1000.0)
           from unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[], $7::integer[], $8::text[], $9::bigint[])
                with ordinality as p(id, user_id, quantity, status, reason, available, request_id, enqueued_at, ord)
          order by p.ord
         returning ${RECORD_COLUMNS}
       ), sold_tickets as (
         insert into tickets (purchase_id, ticket_option_id)
         select s.id, $1::uuid
           from unnest($10::uuid[], $11::integer[]) as s(id, quantity),
                generate_series(1, s.quantity)
       ), updated as (
         update ticket_options set allocation = $12::integer, updated_at = now()
          where id = $1::uuid and allocation <> $12::integer
       )
       select * from inserted`,
      [
        ticketOptionId,
        fresh.map((r) => r.purchaseId),
        fresh.map((r) => r.userId),
        fresh.map((r) => r.quantity),
        decisions.map((d) => d.status),
        decisions.map((d) => d.status === 'rejected' ? d.reason : null),
        decisions.map((d) => d.availableBefore),
        fresh.map((r) => r.requestId),
        fresh.map((r) => r.enqueuedAt),
        sold.map((r) => r.purchaseId),
        sold.map((r) => r.quantity),
        remaining,
      ]
    )
    for (const row of inserted.rows) recorded.set(row.id, row)
  }

  return {
    outcomes: requests.map((r) => recorded.get(r.purchaseId) as PurchaseRecord),
  }
}

/**
 * Records `request` as rejected with `reason` unless it is recorded already,
 * in a transaction of its own under the option's row lock (so it never races
 * a worker's batch into a duplicate key). `requestId` null leaves the request
 * id out, for a purchase whose data PostgreSQL refused. Returns whether this
 * call recorded it, and what is recorded.
 */
async function recordRejection (db: Db, request: PurchaseRequest, reason: RejectionReason, requestId: string | null): Promise<{ inserted: boolean, record: PurchaseRecord }> {
  return await withTransaction(db, async (client) => {
    await client.query('select 1 from ticket_options where id = $1::uuid for update', [request.ticketOptionId])
    const inserted = await client.query<PurchaseRecord>(
      `insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, request_id, enqueued_at)
       values ($1::uuid, $2::uuid, $3::uuid, $4::integer, 'rejected', $5::text, $6::text, to_timestamp($7::bigint / 1000.0))
       on conflict (id) do nothing
       returning ${RECORD_COLUMNS}`,
      [request.purchaseId, request.ticketOptionId, request.userId, request.quantity, reason, requestId, request.enqueuedAt]
    )
    const record = inserted.rows[0] ?? await findPurchase(client, request.ticketOptionId, request.purchaseId)
    if (record === null) throw new Error(`purchase ${request.purchaseId} is neither recorded nor recordable`)
    return { inserted: inserted.rowCount === 1, record }
  })
}

/**
 * For a purchase whose enqueue failed ambiguously (Redis dropped the
 * connection after the command was sent, so the job may exist): records it as
 * rejected `not_queued`, so a worker that meets the job later returns that and
 * buys nothing (invariant 3), and the API's 503 stays true (API.md: a 503
 * bought nothing). Returns null when voided, or the outcome a worker recorded
 * first, which the API answers with instead.
 */
export async function voidUnqueuedPurchase (db: Db, request: PurchaseRequest): Promise<PurchaseRecord | null> {
  const { inserted, record } = await recordRejection(db, request, NOT_QUEUED, request.requestId)
  return inserted ? null : record
}

/**
 * For a purchase PostgreSQL refuses to apply (not a passing outage: its own
 * data is wrong, say a NUL byte in a text field): records it as rejected
 * `unprocessable`, in its turn, so the purchases queued behind it are applied
 * after it and never overtake it (invariant 4). Returns what is recorded.
 */
export async function rejectUnprocessable (db: Db, request: PurchaseRequest): Promise<PurchaseRecord> {
  return (await recordRejection(db, request, UNPROCESSABLE, null)).record
}

/** The recorded outcome of a purchase, or null when it has not been applied (yet). */
export async function findPurchase (db: Db | DbClient, ticketOptionId: string, purchaseId: string): Promise<PurchaseRecord | null> {
  const { rows } = await db.query<PurchaseRecord>(
    `select ${RECORD_COLUMNS} from purchases where id = $1::uuid and ticket_option_id = $2::uuid`,
    [purchaseId, ticketOptionId]
  )
  return rows[0] ?? null
}
