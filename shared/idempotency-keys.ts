/**
 * Idempotency keys in PostgreSQL (migrations/0002_idempotency_keys.sql). The
 * primary key on (ticket_option_id, user_id, key) decides which of several
 * concurrent requests with one key creates the purchase: the one whose row is
 * inserted. The others read the row and follow that purchase.
 * Keep in sync with API.md (`Idempotency-Key`) and README.md "What an answer means".
 */
import { createHash } from 'node:crypto'
import type { Db } from './db'

/** A row of `idempotency_keys`. */
export interface IdempotencyKeyRow {
  /** uuid of the option bought from */
  ticket_option_id: string
  /** uuid of the buyer */
  user_id: string
  /** the client's Idempotency-Key header */
  key: string
  /** sha256 (hex) of the request's quantity; see `purchaseRequestHash` */
  request_hash: string
  /** uuid of the purchase or hold (and job) the first request created */
  purchase_id: string
}

export interface IdempotencyClaimInput {
  ticketOptionId: string
  userId: string
  key: string
  requestHash: string
  /** a fresh purchase id, used when this request wins the key */
  purchaseId: string
  ttlHours: number
}

export type IdempotencyClaim =
  /** this request owns the key: it enqueues `purchaseId` */
  | { kind: 'claimed' }
  /** an earlier request owns it */
  | { kind: 'existing', row: IdempotencyKeyRow }
  /** the owner let it go between our two statements (its enqueue failed): try again */
  | { kind: 'vanished' }

/** What makes two requests with one key "the same request": option and user are in the key, the rest is the quantity. */
export function purchaseRequestHash (quantity: number): string {
  return createHash('sha256').update(`quantity=${quantity}`).digest('hex')
}

/** The same for a hold: a purchase and a hold never count as the same request. */
export function holdRequestHash (quantity: number, holdSeconds: number): string {
  return createHash('sha256').update(`hold;quantity=${quantity};hold_seconds=${holdSeconds}`).digest('hex')
}

/**
 * Inserts the key for a new purchase, or takes over an expired one, in one
 * statement: under concurrency the row lock makes the later statement see the
 * fresh row and leave it alone (`where ... expires_at <= now()`), so exactly
 * one request wins. A loser then reads the row that won.
 */
export async function claimIdempotencyKey (db: Db, input: IdempotencyClaimInput): Promise<IdempotencyClaim> {
  const claimed = await db.query(
    `insert into idempotency_keys (ticket_option_id, user_id, key, request_hash, purchase_id, expires_at)
     values ($1::uuid, $2::uuid, $3::text, $4::text, $5::uuid, now() + make_interval(hours => $6::integer))
     on conflict (ticket_option_id, user_id, key) do update
        set request_hash = excluded.request_hash,
            purchase_id = excluded.purchase_id,
            created_at = now(),
            expires_at = excluded.expires_at
      where idempotency_keys.expires_at <= now()
     returning purchase_id`,
    [input.ticketOptionId, input.userId, input.key, input.requestHash, input.purchaseId, input.ttlHours]
  )
  if (claimed.rowCount === 1) return { kind: 'claimed' }
  const { rows } = await db.query<IdempotencyKeyRow>(
    `select ticket_option_id, user_id, key, request_hash, purchase_id
       from idempotency_keys
      where ticket_option_id = $1::uuid and user_id = $2::uuid and key = $3::text`,
    [input.ticketOptionId, input.userId, input.key]
  )
  const row = rows[0]
  return row === undefined ? { kind: 'vanished' } : { kind: 'existing', row }
}

/**
 * Lets a key go when its purchase was never queued (the enqueue failed and
 * the purchase was voided), so a retry with the key starts afresh. Only the
 * row that still names `purchaseId` is deleted, never a newer owner's.
 */
export async function releaseIdempotencyKey (db: Db, key: Pick<IdempotencyKeyRow, 'ticket_option_id' | 'user_id' | 'key' | 'purchase_id'>): Promise<boolean> {
  const { rowCount } = await db.query(
    `delete from idempotency_keys
      where ticket_option_id = $1::uuid and user_id = $2::uuid and key = $3::text and purchase_id = $4::uuid`,
    [key.ticket_option_id, key.user_id, key.key, key.purchase_id]
  )
  return rowCount === 1
}

/** Deletes up to `limit` expired keys (housekeeping; an expired key is ignored either way). */
export async function deleteExpiredIdempotencyKeys (db: Db, limit = 10_000): Promise<number> {
  const { rowCount } = await db.query(
    `delete from idempotency_keys
      where ctid = any (array(select ctid from idempotency_keys where expires_at <= now() limit $1::integer))`,
    [limit]
  )
  return rowCount ?? 0
}
