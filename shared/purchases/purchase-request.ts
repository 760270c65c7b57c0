/**
 * A purchase request, the one type from the route to the worker: the API
 * builds it (service), carries it as the job's data (queue), and the worker
 * applies it (purchase-store). The worker checks it before use: a job may
 * have been written by older code, so its data is `unknown` until then.
 * The Idempotency-Key is not part of it: jobs carry only what the worker applies.
 */
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'

const Uuid = Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' })

export const PurchaseRequestSchema = Type.Object({
  /** uuid; also the job id, so adding it twice queues it once */
  purchaseId: Uuid,
  ticketOptionId: Uuid,
  userId: Uuid,
  quantity: Type.Integer({ minimum: 1, maximum: 2147483647 }),
  /** The HTTP request id, so one purchase can be followed from the API into the worker. */
  requestId: Type.String({ maxLength: 200 }),
  /** When the API enqueued it (ms since epoch), for the enqueue-to-outcome time. */
  enqueuedAt: Type.Integer({ minimum: 0 }),
})
export type PurchaseRequest = Static<typeof PurchaseRequestSchema>

/** What a route knows of a purchase before the service names it and enqueues it. */
export type NewPurchase = Omit<PurchaseRequest, 'purchaseId' | 'enqueuedAt'>

const checker = TypeCompiler.Compile(PurchaseRequestSchema)

export function isPurchaseRequest (data: unknown): data is PurchaseRequest {
  return checker.Check(data)
}
