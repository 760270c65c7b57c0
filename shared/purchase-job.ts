/**
 * The data of a purchase job. The API adds it, the worker checks it before
 * use: a job may have been written by older code, so it is `unknown` until then.
 */
import { Type, type Static } from '@sinclair/typebox'
import { TypeCompiler } from '@sinclair/typebox/compiler'

const Uuid = Type.String({ pattern: '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' })

export const PurchaseJobDataSchema = Type.Object({
  purchaseId: Uuid,
  ticketOptionId: Uuid,
  userId: Uuid,
  quantity: Type.Integer({ minimum: 1, maximum: 2147483647 }),
  /** The HTTP request id, so one purchase can be followed from the API into the worker. */
  requestId: Type.String({ maxLength: 200 }),
  /** When the API enqueued it (ms since epoch), for the enqueue-to-outcome time. */
  enqueuedAt: Type.Integer({ minimum: 0 }),
})
export type PurchaseJobData = Static<typeof PurchaseJobDataSchema>

const checker = TypeCompiler.Compile(PurchaseJobDataSchema)

export function isPurchaseJobData (data: unknown): data is PurchaseJobData {
  return checker.Check(data)
}
