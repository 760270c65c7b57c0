/**
 * Names of everything this service keeps in Redis, in one place, so the API,
 * the worker and the dashboard agree. BullMQ queue names may not contain `:`.
 * The `{…}` hash tag keeps one option's queue keys in one Redis Cluster slot
 * while different options spread over slots.
 */
export const PURCHASE_JOB_NAME = 'purchase'

export function purchaseQueueName (ticketOptionId: string): string {
  return `purchases-{${ticketOptionId}}`
}

/** Sorted set of option ids with recent purchases, scored by last use (ms). */
export function activeOptionsKey (prefix: string): string {
  return `${prefix}:active-options`
}

/** Pub/sub channel on which the API wakes workers up for an option. */
export function queueWakeupChannel (prefix: string): string {
  return `${prefix}:queue-wakeup`
}

/** Pub/sub channel on which workers publish purchase outcomes to every API process. */
export function purchaseOutcomesChannel (prefix: string): string {
  return `${prefix}:purchase-outcomes`
}

/**
 * The option's line numbers (API.md "Waiting in line"): the last number handed
 * out at enqueue (INCR) and the last number applied. Both carry the option's
 * hash tag, so they share its queue's Redis Cluster slot.
 */
export function lineTicketKey (prefix: string, ticketOptionId: string): string {
  return `${prefix}:line-ticket:{${ticketOptionId}}`
}

export function lineAppliedKey (prefix: string, ticketOptionId: string): string {
  return `${prefix}:line-applied:{${ticketOptionId}}`
}

/**
 * Hash of the option's requests that wait inside a bundle job (member job id
 * → bundle job id), so a request can be found by its own id; in the option's
 * hash slot.
 */
export function bundleMembersKey (prefix: string, ticketOptionId: string): string {
  return `${prefix}:bundle-members:{${ticketOptionId}}`
}

/**
 * The option's direct lease (api/purchasing/direct-sales.ts): while it lives,
 * an API applies a batch of the option itself and no worker starts one. Its
 * value is the lease holder's token; it expires on its own if that API dies.
 * In the option's hash slot, beside its queue and line keys.
 */
export function directLeaseKey (prefix: string, ticketOptionId: string): string {
  return `${prefix}:direct-lease:{${ticketOptionId}}`
}

/**
 * The token of the direct lease whose fence is up (api/purchasing/direct-fences.ts):
 * a request queued while that lease lived has recorded it in PostgreSQL, so
 * later ones need not. Lives no longer than the lease; in the option's hash slot.
 */
export function directFenceKey (prefix: string, ticketOptionId: string): string {
  return `${prefix}:direct-fence:{${ticketOptionId}}`
}
