/**
 * One purchase request, from HTTP to outcome: check the option exists, add the
 * job to the option's queue, wait for the worker's outcome up to the wait
 * limit, and fall back to the recorded outcome in PostgreSQL before saying
 * "pending". The API never answers with an outcome it does not know.
 */
import { randomUUID } from 'node:crypto'
import type { Logger } from 'pino'
import type { Db } from '../shared/db'
import type { PurchaseJobData } from '../shared/purchase-job'
import { findPurchase, voidUnqueuedPurchase, type PurchaseRecord } from '../shared/purchases'
import { commandNeverSent } from '../shared/redis'
import { ticketOptionExists } from '../shared/ticket-options'
import { ServiceUnavailableError } from './errors'
import type { OutcomeWaiter } from './outcome-waiter'
import type { PurchaseQueues } from './purchase-queues'

export type PurchaseResult =
  | { kind: 'option_not_found' }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending', purchaseId: string }

export type PurchaseStatusResult =
  | { kind: 'option_not_found' }
  | { kind: 'purchase_not_found' }
  | { kind: 'recorded', purchase: PurchaseRecord }
  | { kind: 'pending' }

export interface PurchaseInput {
  ticketOptionId: string
  userId: string
  quantity: number
  requestId: string
}

/**
 * Ids of options known to exist. Options are never deleted, so a positive
 * answer can be kept; a negative one never is (the option may be created next).
 */
export class KnownOptions {
  private readonly ids = new Set<string>()
  constructor (private readonly capacity = 100_000) {}
  has (id: string): boolean { return this.ids.has(id) }
  add (id: string): void {
    if (this.ids.size >= this.capacity) this.ids.clear()
    this.ids.add(id)
  }
}

export interface PurchaseServiceDeps {
  db: Db
  queues: PurchaseQueues
  waiter: OutcomeWaiter
  knownOptions: KnownOptions
  waitMs: number
  log: Logger
}

export class PurchaseService {
  constructor (private readonly deps: PurchaseServiceDeps) {}

  async optionExists (ticketOptionId: string): Promise<boolean> {
    const { db, knownOptions } = this.deps
    if (knownOptions.has(ticketOptionId)) return true
    const exists = await ticketOptionExists(db, ticketOptionId)
    if (exists) knownOptions.add(ticketOptionId)
    return exists
  }

  async purchase (input: PurchaseInput): Promise<PurchaseResult> {
    const { queues, waiter, waitMs, log } = this.deps
    // Never create a queue (or any Redis key) for an id nobody created.
    if (!await this.optionExists(input.ticketOptionId)) return { kind: 'option_not_found' }

    const data: PurchaseJobData = { purchaseId: randomUUID(), ...input, enqueuedAt: Date.now() }
    const wait = waiter.wait(data.purchaseId, waitMs)
    try {
      await queues.enqueue(data)
    } catch (err) {
      wait.cancel()
      log.warn({ err, purchaseId: data.purchaseId }, 'could not enqueue purchase')
      // Redis may have stored the job before the connection dropped: void it
      // in PostgreSQL so the 503 stays true, or answer what a worker recorded first.
      if (!commandNeverSent(err)) {
        try {
          const recorded = await voidUnqueuedPurchase(this.deps.db, data)
          if (recorded !== null) return { kind: 'recorded', purchase: recorded }
        } catch (voidErr) {
          log.error({ err: voidErr, purchaseId: data.purchaseId }, 'could not void a purchase whose enqueue failed')
          return { kind: 'pending', purchaseId: data.purchaseId } // its fate is unknown: never claim nothing was bought
        }
      }
      throw new ServiceUnavailableError('The purchase queue')
    }
    return await this.outcome(input.ticketOptionId, data.purchaseId, await wait.promise)
  }

  /** The outcome that arrived, else the one recorded meanwhile, else "pending". */
  private async outcome (ticketOptionId: string, purchaseId: string, arrived: PurchaseRecord | null): Promise<PurchaseResult> {
    const purchase = arrived ?? await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    return purchase === null ? { kind: 'pending', purchaseId } : { kind: 'recorded', purchase }
  }

  async status (ticketOptionId: string, purchaseId: string): Promise<PurchaseStatusResult> {
    if (!await this.optionExists(ticketOptionId)) return { kind: 'option_not_found' }
    const recorded = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    if (recorded !== null) return { kind: 'recorded', purchase: recorded }
    let state
    try {
      state = await this.deps.queues.jobState(ticketOptionId, purchaseId)
    } catch (err) {
      this.deps.log.warn({ err, purchaseId }, 'could not read purchase job state')
      throw new ServiceUnavailableError('The purchase queue')
    }
    if (state === 'pending') return { kind: 'pending' }
    // The job may have completed between the two reads.
    const late = await findPurchase(this.deps.db, ticketOptionId, purchaseId)
    return late === null ? { kind: 'purchase_not_found' } : { kind: 'recorded', purchase: late }
  }
}
