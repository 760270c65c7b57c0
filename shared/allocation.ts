/**
 * The allocation rule, in one place: requests are served strictly in arrival
 * order; a request gets its tickets when at least `quantity` remain, otherwise
 * it is rejected and nothing is taken. A later, smaller request may still
 * succeed after a larger one was rejected (no head-of-line blocking).
 */
export interface AllocationRequest {
  readonly quantity: number
}

export type AllocationDecision =
  | { readonly status: 'succeeded', readonly availableBefore: number }
  | { readonly status: 'rejected', readonly availableBefore: number }

export interface AllocationResult {
  readonly decisions: AllocationDecision[]
  readonly remaining: number
}

export function allocate (available: number, requests: readonly AllocationRequest[]): AllocationResult {
  if (!Number.isSafeInteger(available) || available < 0) throw new RangeError(`available must be a non-negative integer, got ${available}`)
  let remaining = available
  const decisions = requests.map((request): AllocationDecision => {
    if (!Number.isSafeInteger(request.quantity) || request.quantity < 1) throw new RangeError(`quantity must be a positive integer, got ${request.quantity}`)
    const availableBefore = remaining
    if (request.quantity <= remaining) {
      remaining -= request.quantity
      return { status: 'succeeded', availableBefore }
    }
    return { status: 'rejected', availableBefore }
  })
  return { decisions, remaining }
}
