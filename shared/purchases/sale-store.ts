/**
 * The sale in PostgreSQL: applying a batch of one option's queued requests
 * (purchases, holds, confirmations, releases, cancellations) under the
 * option's row lock, recording rejections, and reading what is recorded.
 * The rules that decide each outcome are in ./sale-rules.ts.
 */
import { decideBatch, type Decision, type OptionState, type StoredPurchase, type StoredReservation, type ReservationStatus, type Rejection } from './sale-rules'
import { isPurchaseRequest, jobIdOf, type ConfirmRequest, type HoldRequest, type PurchaseRequest, type SaleRequest } from './sale-request'
import { withTransaction, type Db, type DbClient, type DedicatedConnection } from '../db'

export type PurchaseStatus = 'succeeded' | 'rejected'
/** Reason of a purchase the API answered 503 for while its job may have reached Redis (see `voidUnqueued`). */
export const NOT_QUEUED = 'not_queued'
/** Reason of a purchase PostgreSQL refused to apply (see `rejectUnprocessable`). */
export const UNPROCESSABLE = 'unprocessable'
/** Why a purchase or hold was rejected; each maps to an error code in shared/error-catalogue.ts. */
export type RejectionReason = Rejection | typeof NOT_QUEUED | typeof UNPROCESSABLE

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
  /** for USER_LIMIT_REACHED: the user's tickets when it was decided */
  used: number | null
  /** the hold it confirmed, if any */
  reservation_id: string | null
  /** ISO 8601, once cancelled */
  cancelled_at: string | null
  /** ISO 8601 */
  created_at: string
}

/** A recorded reservation (hold). */
export interface ReservationRecord {
  /** uuid; also the job id of the hold */
  id: string
  ticket_option_id: string
  user_id: string
  quantity: number
  status: ReservationStatus
  reason: string | null
  available: number | null
  used: number | null
  /** ISO 8601; null for a rejected hold */
  expires_at: string | null
  /** the purchase a confirmation created */
  purchase_id: string | null
  created_at: string
}

/** The outcome of a confirmation, release or cancellation: what it changed, keyed by its job id. */
export interface ChangeOutcome {
  /** the job id (`confirm-…`, `release-…`, `cancel-…`) */
  id: string
  kind: 'confirm' | 'release' | 'cancel'
  /** whether this request changed it (false: it was not in a state the request applies to) */
  changed: boolean
  reservation: ReservationRecord | null
  purchase: PurchaseRecord | null
}

/** One outcome per request, published under its job id (`id`). */
export type SaleOutcome = PurchaseRecord | ReservationRecord | ChangeOutcome

export function isChangeOutcome (outcome: SaleOutcome): outcome is ChangeOutcome {
  return 'changed' in outcome
}

/** A bounded label for an outcome (metrics, spans): a purchase's or hold's status, or what a change did. */
export function outcomeStatus (outcome: SaleOutcome): string {
  if (!isChangeOutcome(outcome)) return outcome.status
  if (!outcome.changed) return 'unchanged'
  return { confirm: 'confirmed', release: 'released', cancel: 'cancelled' }[outcome.kind]
}

const iso = (column: string): string => `to_char(${column} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`
const PURCHASE_COLUMNS = `id, ticket_option_id, user_id, quantity, status, reason, available, used, reservation_id,
  ${iso('cancelled_at')} as cancelled_at, ${iso('created_at')} as created_at`
const RESERVATION_COLUMNS = `id, ticket_option_id, user_id, quantity, status, reason, available, used, purchase_id,
  ${iso('expires_at')} as expires_at, ${iso('created_at')} as created_at`

/** Thrown when a job names an option that does not exist; retrying cannot help. */
export class UnknownTicketOptionError extends Error {
  override name = 'UnknownTicketOptionError'
}

interface LockedOption {
  allocation: number
  held: number
  max_per_purchase: number | null
  max_per_user: number | null
}

const ms = (iso: string | null): number | null => iso === null ? null : Date.parse(iso)

/** What a purchase or hold records of its decision: why and at what stock it was refused, if it was. */
function refusalColumns (d: Extract<Decision, { kind: 'purchase' | 'hold' }>): { reason: string | null, available: number | null, used: number | null } {
  return d.status === 'rejected' ? { reason: d.reason, available: d.availableBefore, used: d.used } : { reason: null, available: null, used: null }
}

function stateOf (option: LockedOption): OptionState {
  return { available: option.allocation, held: option.held, maxPerPurchase: option.max_per_purchase, maxPerUser: option.max_per_user }
}

/**
 * Set for the rest of the transaction before a batch's first statement: its
 * statements run on generic plans, made by index. With PostgreSQL's default
 * the sale's statements kept custom plans and every Bind planned them again
 * (log_min_duration_statement: bind 0.22 ms of the write's 0.38 ms in
 * PostgreSQL, 0.02 ms generic). A generic plan is kept until the table's
 * next ANALYZE, so one made while a table was tiny would scan it whole while
 * a sale fills it; with sequential scans off it is made by index, right at
 * any size (every statement here finds its rows by a key). Only for the
 * sale's transactions: a one-off query elsewhere is still planned with its
 * values.
 */
const PLANNED_ONCE = {
  name: 'sale-planned-once',
  text: "select set_config('plan_cache_mode', 'force_generic_plan', true), set_config('enable_seqscan', 'off', true)",
}

/**
 * Whether each option recently applied has a per-user limit (true) or not
 * (false): an option without one skips the usage read. A limit is set when
 * an option is created and never changed; should that change, an option
 * learnt as unlimited reads its usage after the lock instead (one round trip more).
 */
const limitsKnown = new Map<string, boolean>()
const LIMITS_REMEMBERED = 10_000

function rememberLimit (ticketOptionId: string, limited: boolean): void {
  if (limitsKnown.get(ticketOptionId) === limited) return
  if (limitsKnown.size >= LIMITS_REMEMBERED) limitsKnown.clear()
  limitsKnown.set(ticketOptionId, limited)
}

/**
 * Applies requests of ONE option in arrival order, inside the caller's
 * transaction. A purchase or hold already recorded (a redelivered job) keeps
 * its recorded outcome and changes nothing more; a confirmation, release or
 * cancellation changes only what is still in the state it applies to.
 * The statements every batch runs are named (prepared): each connection
 * parses and plans them once, not once per batch (see PLANNED_ONCE).
 */
export async function applySaleBatch (client: DbClient, ticketOptionId: string, requests: readonly SaleRequest[]): Promise<SaleOutcome[]> {
  return await applySaleBatchIf(client, ticketOptionId, requests, null) as SaleOutcome[]
}

/**
 * applySaleBatch, asking `mayWrite` once the row is locked and the batch
 * decided, before anything is written: false writes nothing and returns null
 * (the transaction then holds only the lock and reads). The direct path
 * (api/purchasing/direct-sales.ts) claims its lease meanwhile. `leaves` is
 * told the option's counters and limits as the batch leaves them (they hold
 * once the transaction commits).
 */
export async function applySaleBatchIf (client: DbClient, ticketOptionId: string, requests: readonly SaleRequest[], mayWrite: (() => Promise<boolean>) | null, leaves?: (after: OptionState) => void): Promise<SaleOutcome[] | null> {
  if (requests.some((r) => r.ticketOptionId !== ticketOptionId)) throw new Error('a batch must hold requests of one option')
  // The lock and the reads go out together (the client pipelines, shared/db.ts)
  // as statements of their own, run in the order sent: in READ COMMITTED the
  // reads then see everything committed by whoever held the lock before us (a
  // statement that locks and reads at once reads with the snapshot from
  // before its wait). The users' usage is read only for an option with a
  // per-user limit, which the worker learns from the option's first batch.
  const purchaseIds = requests.flatMap((r) => isPurchaseRequest(r) || r.kind === 'cancel' ? [r.purchaseId] : [])
  const reservationIds = requests.flatMap((r) => r.kind === 'hold' || r.kind === 'confirm' || r.kind === 'release' ? [r.reservationId] : [])
  const planning = client.query(PLANNED_ONCE)
  const locking = client.query<LockedOption>({
    name: 'sale-lock-option',
    text: 'select allocation, held, max_per_purchase, max_per_user from ticket_options where id = $1::uuid for update',
    values: [ticketOptionId],
  })
  const reading = Promise.all([
    readPurchases(client, purchaseIds),
    readReservations(client, reservationIds),
    limitsKnown.get(ticketOptionId) === false ? null : readUsage(client, ticketOptionId, requests),
  ])
  reading.catch(() => {}) // awaited below, after the lock's own error if it has one
  const option = (await Promise.all([planning, locking]))[1].rows[0]
  if (option === undefined) throw new UnknownTicketOptionError(`ticket option ${ticketOptionId} does not exist`)
  rememberLimit(ticketOptionId, option.max_per_user !== null)
  const [purchaseRows, reservationRows, readUsageRows] = await reading
  const usage = option.max_per_user === null ? new Map<string, number>() : readUsageRows ?? await readUsage(client, ticketOptionId, requests)
  const now = Date.now()
  const effects = decideBatch({
    option: stateOf(option),
    purchases: new Map(purchaseRows.map((p): [string, StoredPurchase] => [p.id, { id: p.id, userId: p.user_id, quantity: p.quantity, status: p.status, cancelled: p.cancelled_at !== null }])),
    reservations: new Map(reservationRows.map((r): [string, StoredReservation] => [r.id, { id: r.id, userId: r.user_id, quantity: r.quantity, status: r.status, expiresAt: ms(r.expires_at) }])),
    recordedHolds: new Set(reservationRows.map((r) => r.id)),
    usage,
    now,
  }, requests)

  if (mayWrite !== null && !await mayWrite()) return null
  const written = await writeEffects(client, ticketOptionId, requests, effects.decisions, {
    allocation: option.allocation,
    held: option.held,
    newAllocation: effects.available,
    newHeld: effects.held,
    expired: effects.expired,
  })
  leaves?.({ ...stateOf(option), available: effects.available, held: effects.held })
  return await outcomesOf(client, requests, effects.decisions, purchaseRows, reservationRows, written)
}

/** How a batch sent at once ended (applyPurchasesAtOnce). */
export type AtOnceResult =
  /** committed; the option as the batch left it */
  | { kind: 'applied', outcomes: PurchaseRecord[], after: OptionState }
  /** nothing written: the option was not as expected; `found` is how it is */
  | { kind: 'stale', found: OptionState }
  /** nothing written: the row lock came later than `lockWithinMs` */
  | { kind: 'late' }
  /** nothing written: the fence of the lease `fencedBy` is up (a request queued under it) */
  | { kind: 'fenced' }

/**
 * Session settings of the connection applyPurchasesAtOnce runs on (libpq
 * `options`): PLANNED_ONCE for the whole session, which does nothing else.
 */
export const AT_ONCE_SESSION = '-c plan_cache_mode=force_generic_plan -c enable_seqscan=off'

/**
 * The statements of applyPurchasesAtOnce, which differ only in where the
 * purchases to write come from: $1 the option, $2 the purchases (see below),
 * $3–$5 the option as expected (available, held, max_per_purchase), $6 how
 * soon the row lock must come (ms), $7–$8 available and held after the batch,
 * $9 the token of the lease held from an earlier batch (null: none). Built
 * once: a text built per call is compared with the prepared one by
 * node-postgres on every run, and a freshly concatenated string is flattened
 * first (1.5 kB a purchase).
 */
const atOnceStatement = (purchases: string): string => `with locked as (
     select allocation, held, max_per_purchase, max_per_user from ticket_options where id = $1::uuid for update
   ), guard as (
     select exists (select 1 from direct_fences where ticket_option_id = $1::uuid and token = $9::text) as fence_up,
            allocation = $3::integer and held = $4::integer and max_per_purchase is not distinct from $5::integer and max_per_user is null
            and clock_timestamp() - transaction_timestamp() < $6::integer * interval '1 millisecond' as as_expected
       from locked
   ), new_purchases as (
     insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, available, used, request_id, enqueued_at)
     ${purchases}
     returning id, ${iso('created_at')} as created_at
   ), counters as (
     update ticket_options set allocation = $7::integer, held = $8::integer, updated_at = now()
      where id = $1::uuid and (select as_expected and not fence_up from guard) and (allocation <> $7::integer or held <> $8::integer)
   )
   select p.id, p.created_at,
          case when p.id is null then json_build_object('allocation', l.allocation, 'held', l.held, 'max_per_purchase', l.max_per_purchase,
            'max_per_user', l.max_per_user, 'fence_up', (select fence_up from guard)) end as found
     from locked l left join new_purchases p on true`

/** A purchase as applyPurchasesAtOnce writes it: a row of AT_ONCE_STATEMENT's json, or AT_ONCE_ONE_STATEMENT's parameters. */
interface AtOnceRow {
  id: string
  user_id: string
  quantity: number
  status: string
  reason: string | null
  available: number | null
  used: number | null
  request_id: string
  /** ms since epoch */
  enqueued_at: number
}

/** What either statement answers: a row per purchase written, or one row telling how the option stood. */
interface AtOnceResultRow {
  id: string | null
  created_at: string | null
  found: (LockedOption & { fence_up: boolean }) | null
}

/** Several purchases: $2 is a json array of rows of `purchases`, written in its order. */
const AT_ONCE_STATEMENT = atOnceStatement(`select p.id, $1::uuid, p.user_id, p.quantity, p.status, p.reason, p.available, p.used, p.request_id, to_timestamp(p.enqueued_at / 1000.0)
       from rows from (json_to_recordset($2::json) as (id uuid, user_id uuid, quantity integer, status text, reason text,
            available integer, used integer, request_id text, enqueued_at bigint)) with ordinality as p
      where (select as_expected and not fence_up from guard)
      order by p.ordinality`)

/**
 * One purchase (a lone buyer's batch): $2 its id and $10–$17 its columns,
 * each a parameter of its own. About a tenth less of PostgreSQL's CPU than
 * the json statement with one row: no json to parse, no function scan and
 * sort to set up (measured side by side on one connection each).
 */
const AT_ONCE_ONE_STATEMENT = atOnceStatement(`select $2::uuid, $1::uuid, $10::uuid, $11::integer, $12::text, $13::text, $14::integer, $15::integer, $16::text, to_timestamp($17::bigint / 1000.0)
      where (select as_expected and not fence_up from guard)`)

/**
 * A batch of new purchases of one option without a per-user limit, as ONE
 * statement committed on its own: decided from `expected` (the option as
 * this process last left it) before anything is read, then written only if
 * the option's row, once locked, is still as expected (nobody else sold
 * since) and the lock came within `lockWithinMs` of the statement's start
 * (the direct lease's fence, on PostgreSQL's clock) and, for a batch on a
 * lease held from an earlier batch (`fencedBy`, its token), no request was
 * queued under that lease (api/purchasing/direct-fences.ts); otherwise nothing
 * is written. One round trip, as the direct design's purchase, where
 * applySaleBatch needs three (lock and reads, write, commit).
 *
 * Correct under concurrency because `for update` returns the row as the
 * last transaction that held its lock left it, even when that committed
 * after this statement started; nothing else the statement reads could have
 * changed (the purchase ids are new). Runs on a connection of its own with
 * AT_ONCE_SESSION, so its plan is made once, by index.
 */
export async function applyPurchasesAtOnce (connection: DedicatedConnection, ticketOptionId: string, requests: readonly PurchaseRequest[], expected: OptionState, lockWithinMs: number, fencedBy: string | null = null): Promise<AtOnceResult> {
  if (requests.length === 0 || requests.some((r) => r.ticketOptionId !== ticketOptionId)) throw new Error('a batch must hold requests of one option')
  // Usage would need a read before deciding: an option with a per-user limit takes applySaleBatch.
  if (expected.maxPerUser !== null) throw new Error('a batch decided at once needs an option without a per-user limit')
  const { decisions, available, held } = decideBatch({ option: { ...expected }, purchases: new Map(), reservations: new Map(), recordedHolds: new Set(), usage: new Map(), now: Date.now() }, requests)
  // Each purchase to write: its record as it will read (all but created_at, which PostgreSQL
  // gives), by id, and its columns. Several go as the json statement's ONE parameter, not an array
  // per column: node-postgres encodes each parameter on its own, an array element by element,
  // which cost the API more CPU than json_to_recordset costs PostgreSQL. Back comes one row per
  // purchase written, its id and time, or one row whose `found` tells how the option stood when
  // nothing was written: few columns, as each costs the client a parser and a field per row.
  const byId = new Map<string, PurchaseRecord>()
  const purchases: AtOnceRow[] = []
  for (let i = 0; i < requests.length; i++) {
    const request = requests[i] as PurchaseRequest
    const d = decisions[i] as Decision
    // Not a purchase decision: the same id twice in the batch, applied once.
    if (d.kind !== 'purchase') continue
    const { reason, available: availableBefore, used } = refusalColumns(d)
    byId.set(request.purchaseId, { id: request.purchaseId, ticket_option_id: ticketOptionId, user_id: request.userId, quantity: request.quantity, status: d.status, reason, available: availableBefore, used, reservation_id: null, cancelled_at: null, created_at: '' })
    purchases.push({ id: request.purchaseId, user_id: request.userId, quantity: request.quantity, status: d.status, reason, available: availableBefore, used, request_id: request.requestId, enqueued_at: request.enqueuedAt })
  }
  const one = purchases.length === 1 ? purchases[0] as AtOnceRow : null
  const values: unknown[] = [ticketOptionId, one === null ? JSON.stringify(purchases) : one.id, expected.available, expected.held, expected.maxPerPurchase, Math.floor(lockWithinMs), available, held, fencedBy]
  if (one !== null) values.push(one.user_id, one.quantity, one.status, one.reason, one.available, one.used, one.request_id, one.enqueued_at)
  const { rows } = await (one === null
    ? connection.run<AtOnceResultRow>('sale-purchases-at-once', AT_ONCE_STATEMENT, values)
    : connection.run<AtOnceResultRow>('sale-purchase-at-once', AT_ONCE_ONE_STATEMENT, values))
  const [first] = rows
  if (first === undefined) throw new UnknownTicketOptionError(`ticket option ${ticketOptionId} does not exist`)
  if (first.found !== null) {
    if (first.found.fence_up) return { kind: 'fenced' }
    const found = stateOf(first.found)
    const asExpected = found.available === expected.available && found.held === expected.held && found.maxPerPurchase === expected.maxPerPurchase && found.maxPerUser === null
    return asExpected ? { kind: 'late' } : { kind: 'stale', found }
  }
  for (const row of rows) (byId.get(row.id as string) as PurchaseRecord).created_at = row.created_at as string
  const after: OptionState = { available, held, maxPerPurchase: expected.maxPerPurchase, maxPerUser: expected.maxPerUser }
  return { kind: 'applied', outcomes: requests.map((r) => byId.get(r.purchaseId) as PurchaseRecord), after }
}

async function readPurchases (db: Db | DbClient, ids: readonly string[]): Promise<PurchaseRecord[]> {
  if (ids.length === 0) return []
  return (await db.query<PurchaseRecord>({ name: 'sale-read-purchases', text: `select ${PURCHASE_COLUMNS} from purchases where id = any($1::uuid[])`, values: [ids] })).rows
}

async function readReservations (db: Db | DbClient, ids: readonly string[]): Promise<ReservationRecord[]> {
  if (ids.length === 0) return []
  return (await db.query<ReservationRecord>({ name: 'sale-read-reservations', text: `select ${RESERVATION_COLUMNS} from reservations where id = any($1::uuid[])`, values: [ids] })).rows
}

/** max_per_user counts each user's succeeded purchases not cancelled plus active holds. */
async function readUsage (client: DbClient, ticketOptionId: string, requests: readonly SaleRequest[]): Promise<Map<string, number>> {
  const users = [...new Set(requests.map((r) => r.userId))]
  const { rows } = await client.query<{ user_id: string, used: string }>({
    name: 'sale-read-usage',
    text: `select user_id, sum(quantity) as used from (
       select user_id, quantity from purchases
        where ticket_option_id = $1::uuid and user_id = any($2::uuid[]) and status = 'succeeded' and cancelled_at is null
       union all
       select user_id, quantity from reservations
        where ticket_option_id = $1::uuid and user_id = any($2::uuid[]) and status = 'held'
     ) as held_or_bought group by user_id`,
    values: [ticketOptionId, users],
  })
  return new Map(rows.map((r) => [r.user_id, Number(r.used)]))
}

interface Counters {
  allocation: number
  held: number
  newAllocation: number
  newHeld: number
  /** holds a confirmation found past their time */
  expired: string[]
}

/**
 * Writes a batch's decisions in one statement: the new purchases (confirmed
 * holds among them) and holds, the holds that changed status, the cancelled
 * purchases, and the option's counters (left alone when nothing changed).
 * Purchases a reservation update names are inserted by a sibling part of the
 * statement: foreign keys are checked at its end. Returns the new purchases.
 */
async function writeEffects (client: DbClient, ticketOptionId: string, requests: readonly SaleRequest[], decisions: readonly Decision[], counters: Counters): Promise<PurchaseRecord[]> {
  const purchases: Array<{ id: string, userId: string, quantity: number, status: string, reason: string | null, available: number | null, used: number | null, request: SaleRequest, reservationId: string | null }> = []
  const holds: Array<{ request: HoldRequest, status: string, reason: string | null, available: number | null, used: number | null, expiresAt: number | null }> = []
  const changed: Array<{ id: string, status: string, purchaseId: string | null }> = counters.expired.map((id) => ({ id, status: 'expired', purchaseId: null }))
  const cancelled: string[] = []
  const confirms: ConfirmRequest[] = []

  requests.forEach((request, i) => {
    const d = decisions[i] as Decision
    if (d.kind === 'purchase' && isPurchaseRequest(request)) {
      purchases.push({ id: request.purchaseId, userId: request.userId, quantity: request.quantity, status: d.status, request, reservationId: null, ...refusalColumns(d) })
    } else if (d.kind === 'hold' && request.kind === 'hold') {
      holds.push({ request, status: d.status, ...refusalColumns(d), expiresAt: d.status === 'held' ? d.expiresAt : null })
    } else if (d.kind === 'confirm' && d.status === 'confirmed' && request.kind === 'confirm') {
      confirms.push(request)
      changed.push({ id: request.reservationId, status: 'confirmed', purchaseId: request.purchaseId })
    } else if (d.kind === 'release' && d.status === 'released' && request.kind === 'release') {
      changed.push({ id: request.reservationId, status: 'released', purchaseId: null })
    } else if (d.kind === 'cancel' && d.status === 'cancelled' && request.kind === 'cancel') {
      cancelled.push(request.purchaseId)
    }
  })
  const countersChange = counters.newAllocation !== counters.allocation || counters.newHeld !== counters.held
  if (purchases.length === 0 && holds.length === 0 && changed.length === 0 && cancelled.length === 0 && confirms.length === 0 && !countersChange) return []

  // A confirmation's purchase takes the reservation's user and quantity.
  const confirmed = confirms.length === 0
    ? []
    : (await client.query<{ id: string, user_id: string, quantity: number }>('select id, user_id, quantity from reservations where id = any($1::uuid[])', [confirms.map((c) => c.reservationId)])).rows
  const heldBy = new Map(confirmed.map((r) => [r.id, r]))
  for (const c of confirms) {
    const hold = heldBy.get(c.reservationId)
    if (hold === undefined) throw new Error(`reservation ${c.reservationId} vanished under its option's lock`)
    purchases.push({ id: c.purchaseId, userId: hold.user_id, quantity: hold.quantity, status: 'succeeded', reason: null, available: null, used: null, request: c, reservationId: c.reservationId })
  }

  const { rows } = await client.query<PurchaseRecord>({
    name: 'sale-write-batch',
    text: `with new_purchases as (
       insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, available, used, request_id, enqueued_at, reservation_id)
       select p.id, $1::uuid, p.user_id, p.quantity, p.status, p.reason, p.available, p.used, p.request_id, to_timestamp(p.enqueued_at / 1000.0), p.reservation_id
         from unnest($2::uuid[], $3::uuid[], $4::integer[], $5::text[], $6::text[], $7::integer[], $8::integer[], $9::text[], $10::bigint[], $11::uuid[])
              with ordinality as p(id, user_id, quantity, status, reason, available, used, request_id, enqueued_at, reservation_id, ord)
        order by p.ord
       returning ${PURCHASE_COLUMNS}
     ), new_holds as (
       insert into reservations (id, ticket_option_id, user_id, quantity, status, reason, available, used, expires_at, request_id, enqueued_at)
       select h.id, $1::uuid, h.user_id, h.quantity, h.status, h.reason, h.available, h.used, to_timestamp(h.expires_at / 1000.0), h.request_id, to_timestamp(h.enqueued_at / 1000.0)
         from unnest($12::uuid[], $13::uuid[], $14::integer[], $15::text[], $16::text[], $17::integer[], $18::integer[], $19::bigint[], $20::text[], $21::bigint[])
              with ordinality as h(id, user_id, quantity, status, reason, available, used, expires_at, request_id, enqueued_at, ord)
        order by h.ord
     ), changed_holds as (
       update reservations r set status = c.status, purchase_id = c.purchase_id, decided_at = now()
         from unnest($22::uuid[], $23::text[], $24::uuid[]) as c(id, status, purchase_id)
        where r.id = any($22::uuid[]) and r.id = c.id and r.status = 'held'
     ), cancelled as (
       update purchases set cancelled_at = now()
        where id = any($25::uuid[]) and status = 'succeeded' and cancelled_at is null
     ), counters as (
       update ticket_options set allocation = $26::integer, held = $27::integer, updated_at = now()
        where id = $1::uuid and (allocation <> $26::integer or held <> $27::integer)
     )
     select * from new_purchases`,
    values: [
      ticketOptionId,
      purchases.map((p) => p.id), purchases.map((p) => p.userId), purchases.map((p) => p.quantity), purchases.map((p) => p.status),
      purchases.map((p) => p.reason), purchases.map((p) => p.available), purchases.map((p) => p.used),
      purchases.map((p) => p.request.requestId), purchases.map((p) => p.request.enqueuedAt), purchases.map((p) => p.reservationId),
      holds.map((h) => h.request.reservationId), holds.map((h) => h.request.userId), holds.map((h) => h.request.quantity), holds.map((h) => h.status),
      holds.map((h) => h.reason), holds.map((h) => h.available), holds.map((h) => h.used), holds.map((h) => h.expiresAt),
      holds.map((h) => h.request.requestId), holds.map((h) => h.request.enqueuedAt),
      changed.map((c) => c.id), changed.map((c) => c.status), changed.map((c) => c.purchaseId),
      cancelled,
      counters.newAllocation, counters.newHeld,
    ],
  })
  return rows
}

/** One outcome per request, in order, from the records as they stand after the batch. */
async function outcomesOf (client: DbClient, requests: readonly SaleRequest[], decisions: readonly Decision[], purchasesBefore: readonly PurchaseRecord[], reservationsBefore: readonly ReservationRecord[], newPurchases: readonly PurchaseRecord[]): Promise<SaleOutcome[]> {
  const purchases = new Map(purchasesBefore.map((p) => [p.id, p]))
  for (const p of newPurchases) purchases.set(p.id, p)
  const reservations = new Map(reservationsBefore.map((r) => [r.id, r]))
  // Records this batch changed or created beyond the new purchases: read again (holds, and
  // reservations and purchases that a confirmation, release or cancellation touched).
  const stale = requests.filter((r) => !isPurchaseRequest(r))
  if (stale.length > 0) {
    const [p, r] = await Promise.all([
      readPurchases(client, stale.flatMap((q) => q.kind === 'cancel' || q.kind === 'confirm' ? [q.purchaseId] : [])),
      readReservations(client, stale.flatMap((q) => q.kind === 'hold' || q.kind === 'confirm' || q.kind === 'release' ? [q.reservationId] : [])),
    ])
    for (const row of p) purchases.set(row.id, row)
    for (const row of r) reservations.set(row.id, row)
  }
  function outcomeOf (request: SaleRequest, d: Decision): SaleOutcome {
    switch (request.kind) {
      case undefined:
      case 'purchase': return purchases.get(request.purchaseId) as PurchaseRecord
      case 'hold': return reservations.get(request.reservationId) as ReservationRecord
      case 'confirm': {
        const reservation = reservations.get(request.reservationId) ?? null
        const purchase = reservation?.purchase_id == null ? null : purchases.get(reservation.purchase_id) ?? null
        return { id: jobIdOf(request), kind: 'confirm', changed: d.kind === 'confirm' && d.status === 'confirmed', reservation, purchase }
      }
      case 'release':
        return { id: jobIdOf(request), kind: 'release', changed: d.kind === 'release' && d.status === 'released', reservation: reservations.get(request.reservationId) ?? null, purchase: null }
      case 'cancel':
        return { id: jobIdOf(request), kind: 'cancel', changed: d.kind === 'cancel' && d.status === 'cancelled', reservation: null, purchase: purchases.get(request.purchaseId) ?? null }
    }
  }
  return requests.map((request, i) => outcomeOf(request, decisions[i] as Decision))
}

/**
 * Records a purchase or hold as rejected with `reason` unless it is recorded
 * already, in a transaction of its own under the option's row lock (so it
 * never races a worker's batch into a duplicate key). `requestId` null leaves
 * the request id out, for a request whose data PostgreSQL refused. Returns
 * whether this call recorded it, and what is recorded.
 */
async function recordRejection (db: Db, request: PurchaseRequest | HoldRequest, reason: RejectionReason, requestId: string | null): Promise<{ inserted: boolean, record: PurchaseRecord | ReservationRecord }> {
  return await withTransaction(db, async (client) => {
    await client.query('select 1 from ticket_options where id = $1::uuid for update', [request.ticketOptionId])
    const values = [jobIdOf(request), request.ticketOptionId, request.userId, request.quantity, reason, requestId, request.enqueuedAt]
    const inserted = request.kind === 'hold'
      ? await client.query<ReservationRecord>(
        `insert into reservations (id, ticket_option_id, user_id, quantity, status, reason, request_id, enqueued_at)
         values ($1::uuid, $2::uuid, $3::uuid, $4::integer, 'rejected', $5::text, $6::text, to_timestamp($7::bigint / 1000.0))
         on conflict (id) do nothing
         returning ${RESERVATION_COLUMNS}`, values)
      : await client.query<PurchaseRecord>(
        `insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, request_id, enqueued_at)
         values ($1::uuid, $2::uuid, $3::uuid, $4::integer, 'rejected', $5::text, $6::text, to_timestamp($7::bigint / 1000.0))
         on conflict (id) do nothing
         returning ${PURCHASE_COLUMNS}`, values)
    // Not the batch's named reads: their plans are made in the sale's transactions only (PLANNED_ONCE).
    const record = inserted.rows[0] ?? (request.kind === 'hold'
      ? await findReservation(client, request.ticketOptionId, request.reservationId)
      : await findPurchase(client, request.ticketOptionId, request.purchaseId))
    if (record === null) throw new Error(`${jobIdOf(request)} is neither recorded nor recordable`)
    return { inserted: inserted.rowCount === 1, record }
  })
}

/**
 * For a purchase or hold whose enqueue failed ambiguously (Redis dropped the
 * connection after the command was sent, so the job may exist): records it as
 * rejected `not_queued`, so a worker that meets the job later returns that and
 * changes nothing (invariant 3), and the API's 503 stays true (API.md: a 503
 * bought nothing). Returns null when voided, or the outcome a worker recorded
 * first, which the API answers with instead.
 */
export async function voidUnqueued (db: Db, request: PurchaseRequest | HoldRequest): Promise<PurchaseRecord | ReservationRecord | null> {
  const { inserted, record } = await recordRejection(db, request, NOT_QUEUED, request.requestId)
  return inserted ? null : record
}

/**
 * For a request PostgreSQL refuses to apply (not a passing outage: its own
 * data is wrong, say a NUL byte in a text field). A purchase or hold is
 * recorded as rejected `unprocessable`, in its turn, so the requests queued
 * behind it are applied after it and never overtake it (invariant 4); a
 * confirmation, release or cancellation changes nothing and says so.
 */
export async function rejectUnprocessable (db: Db, request: SaleRequest): Promise<SaleOutcome> {
  if (isPurchaseRequest(request) || request.kind === 'hold') return (await recordRejection(db, request, UNPROCESSABLE, null)).record
  const reservation = request.kind === 'cancel' ? null : await findReservation(db, request.ticketOptionId, request.reservationId)
  const purchase = request.kind === 'cancel' ? await findPurchase(db, request.ticketOptionId, request.purchaseId) : null
  return { id: jobIdOf(request), kind: request.kind, changed: false, reservation, purchase }
}

/** The recorded outcome of a purchase, or null when it has not been applied (yet). */
export async function findPurchase (db: Db | DbClient, ticketOptionId: string, purchaseId: string): Promise<PurchaseRecord | null> {
  const { rows } = await db.query<PurchaseRecord>(
    `select ${PURCHASE_COLUMNS} from purchases where id = $1::uuid and ticket_option_id = $2::uuid`,
    [purchaseId, ticketOptionId]
  )
  return rows[0] ?? null
}

/** A recorded reservation, or null when its hold has not been applied (yet). */
export async function findReservation (db: Db | DbClient, ticketOptionId: string, reservationId: string): Promise<ReservationRecord | null> {
  const { rows } = await db.query<ReservationRecord>(
    `select ${RESERVATION_COLUMNS} from reservations where id = $1::uuid and ticket_option_id = $2::uuid`,
    [reservationId, ticketOptionId]
  )
  return rows[0] ?? null
}

/** Options with at least one hold past its time, oldest deadline first. */
export async function optionsWithExpiredHolds (db: Db, limit = 100): Promise<string[]> {
  const { rows } = await db.query<{ ticket_option_id: string }>(
    `select ticket_option_id from reservations
      where status = 'held' and expires_at <= now()
      group by ticket_option_id order by min(expires_at) limit $1::integer`,
    [limit]
  )
  return rows.map((r) => r.ticket_option_id)
}

/**
 * Expires the option's holds past their time and gives their tickets back, in
 * one transaction under the option's row lock, so it is ordered with the
 * option's batches: a confirmation decided before it wins, one after it finds
 * the hold expired (sale-rules.ts decides the same for a confirmation that
 * arrives first). Returns how many tickets came back.
 */
export async function expireHolds (db: Db, ticketOptionId: string): Promise<{ holds: number, tickets: number }> {
  return await withTransaction(db, async (client) => {
    await client.query('select 1 from ticket_options where id = $1::uuid for update', [ticketOptionId])
    const { rows } = await client.query<{ holds: number, tickets: number }>(
      `with expired as (
         update reservations set status = 'expired', decided_at = now()
          where ticket_option_id = $1::uuid and status = 'held' and expires_at <= now()
         returning quantity
       ), back as (
         update ticket_options o
            set allocation = o.allocation + e.tickets, held = o.held - e.tickets, updated_at = now()
           from (select coalesce(sum(quantity), 0)::integer as tickets from expired) e
          where o.id = $1::uuid and e.tickets > 0
       )
       select count(*)::integer as holds, coalesce(sum(quantity), 0)::integer as tickets from expired`,
      [ticketOptionId]
    )
    return rows[0] ?? { holds: 0, tickets: 0 }
  })
}

/** Which of these purchases and reservations are recorded (decided): one query for any number of ids. */
export async function recordedIds (db: Db, purchaseIds: readonly string[], reservationIds: readonly string[]): Promise<Set<string>> {
  if (purchaseIds.length === 0 && reservationIds.length === 0) return new Set()
  const { rows } = await db.query<{ id: string }>(
    `select id from purchases where id = any($1::uuid[])
     union all
     select id from reservations where id = any($2::uuid[])`,
    [purchaseIds, reservationIds]
  )
  return new Set(rows.map((r) => r.id))
}
