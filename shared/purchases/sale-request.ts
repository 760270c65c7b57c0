/**
 * What an option's queue carries: the one type of each request that changes
 * what is available, from the route through the job to the worker (API.md,
 * contract version 2). Every one of them is decided in the option's arrival
 * order, with its purchases (DESIGN.md invariant 4). The worker checks a job's
 * data against `SaleRequestSchema` before use: a job may have been written by
 * older code, so its data is `unknown` until then (a purchase job of the first
 * version carries no `kind`).
 *
 * The Idempotency-Key is not part of them: jobs carry only what the worker applies.
 */
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'

const Uuid = Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' })
const Quantity = Type.Integer({ minimum: 1, maximum: 2147483647 })

/** What every request carries. */
const common = {
  ticketOptionId: Uuid,
  userId: Uuid,
  /** The HTTP request id, so one request can be followed from the API into the worker. */
  requestId: Type.String({ maxLength: 200 }),
  /** When the API enqueued it (ms since epoch), for the enqueue-to-outcome time. */
  enqueuedAt: Type.Integer({ minimum: 0 }),
  /** Its number in the option's line, handed out at enqueue (absent in jobs of older code): position = line - applied line - 1. */
  line: Type.Optional(Type.Integer({ minimum: 1 })),
  /** The API's trace context (W3C headers as JSON), present only when tracing is on: the worker's spans join the request's trace (shared/telemetry/purchase-spans.ts). */
  traceContext: Type.Optional(Type.String({ maxLength: 1000 })),
}

export const PurchaseRequestSchema = Type.Object({
  kind: Type.Optional(Type.Literal('purchase')),
  /** uuid; also the job id, so adding it twice queues it once */
  purchaseId: Uuid,
  quantity: Quantity,
  ...common,
})
export type PurchaseRequest = Static<typeof PurchaseRequestSchema>

/** Holds tickets for the user until `holdSeconds` from when it is applied. */
export const HoldRequestSchema = Type.Object({
  kind: Type.Literal('hold'),
  /** uuid; also the job id */
  reservationId: Uuid,
  quantity: Quantity,
  holdSeconds: Type.Integer({ minimum: 1, maximum: 86_400 }),
  ...common,
})
export type HoldRequest = Static<typeof HoldRequestSchema>

/** Turns a held reservation into the purchase `purchaseId`. */
export const ConfirmRequestSchema = Type.Object({
  kind: Type.Literal('confirm'),
  reservationId: Uuid,
  purchaseId: Uuid,
  ...common,
})
export type ConfirmRequest = Static<typeof ConfirmRequestSchema>

/** Gives a held reservation's tickets back. */
export const ReleaseRequestSchema = Type.Object({
  kind: Type.Literal('release'),
  reservationId: Uuid,
  ...common,
})
export type ReleaseRequest = Static<typeof ReleaseRequestSchema>

/** Gives a succeeded purchase's tickets back. */
export const CancelRequestSchema = Type.Object({
  kind: Type.Literal('cancel'),
  purchaseId: Uuid,
  ...common,
})
export type CancelRequest = Static<typeof CancelRequestSchema>

export const SaleRequestSchema = Type.Union([PurchaseRequestSchema, HoldRequestSchema, ConfirmRequestSchema, ReleaseRequestSchema, CancelRequestSchema])
export type SaleRequest = PurchaseRequest | HoldRequest | ConfirmRequest | ReleaseRequest | CancelRequest

/**
 * Several requests of one option in one job, in line order: what one API
 * gathered while its previous add for the option was in flight
 * (api/purchasing/purchase-queues.ts). A bundle costs the queue one job's
 * add, take and completion instead of one per request; each request keeps
 * its own id, line number and outcome, and the worker applies the bundle's
 * requests together, in line order, as it applies any batch.
 */
export const SaleBundleSchema = Type.Object({
  kind: Type.Literal('bundle'),
  requests: Type.Array(SaleRequestSchema, { minItems: 1 }),
})
export type SaleBundle = Static<typeof SaleBundleSchema>

/** A bundle's job id: its first request's, so a bundle added twice is queued once. */
export function bundleJobIdOf (requests: readonly SaleRequest[]): string {
  const [first] = requests
  if (first === undefined) throw new Error('an empty bundle has no job id')
  return `bundle-${jobIdOf(first)}`
}

/** What a route knows of a purchase before the service names it and enqueues it. */
export type NewPurchase = Omit<PurchaseRequest, 'kind' | 'purchaseId' | 'enqueuedAt' | 'line'>
/** What a route knows of a hold before the service names it and enqueues it. */
export type NewHold = Omit<HoldRequest, 'kind' | 'reservationId' | 'enqueuedAt' | 'line'>

const checker = TypeCompiler.Compile(SaleRequestSchema)
const bundleChecker = TypeCompiler.Compile(SaleBundleSchema)

export function isSaleRequest (data: unknown): data is SaleRequest {
  return checker.Check(data)
}

/**
 * The requests a job carries, in line order: its own one, or a bundle's; null
 * when its data is neither, or a bundle mixes options.
 */
export function requestsOfJob (data: unknown): SaleRequest[] | null {
  if (checker.Check(data)) return [data]
  if (!bundleChecker.Check(data)) return null
  const [first] = data.requests
  return first !== undefined && data.requests.every((r) => r.ticketOptionId === first.ticketOptionId) ? data.requests : null
}

export function isPurchaseRequest (request: SaleRequest): request is PurchaseRequest {
  return request.kind === undefined || request.kind === 'purchase'
}

/**
 * The job id of a request, which is also the key its outcome is published
 * under. A purchase's and a hold's are their own ids, so adding one twice
 * queues it once; a confirmation, release or cancellation is named after what
 * it changes, so concurrent retries of one share a job.
 */
export function jobIdOf (request: SaleRequest): string {
  switch (request.kind) {
    case undefined:
    case 'purchase': return request.purchaseId
    case 'hold': return request.reservationId
    case 'confirm': return `confirm-${request.reservationId}`
    case 'release': return `release-${request.reservationId}`
    case 'cancel': return `cancel-${request.purchaseId}`
  }
}

/** The highest line number among requests, or null when none has one. */
export function lastLineOf (requests: readonly SaleRequest[]): number | null {
  let last: number | null = null
  for (const r of requests) if (r.line !== undefined && (last === null || r.line > last)) last = r.line
  return last
}
