/**
 * Which queues the dashboard shows: the option queues in the registry of
 * active options (shared/queues/queue-registry.ts), the most recently used first and
 * at most `maxQueues` of them, each labelled with its option's name from
 * PostgreSQL. Options the workers let go (no longer registered) drop out, and
 * their Queue objects are closed.
 *
 * Every Queue shares the API's fail-fast queue connection, so the dashboard
 * adds no connection however many options there are. Adapters are read-only:
 * retrying a completed purchase job would run the purchase again.
 */
import type { createBullBoard } from '@bull-board/api'
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter'
import type { Queue } from 'bullmq'
import type { Logger } from 'pino'
import type { QueueBackend } from '../../shared/queues/queue-backend'
import { purchaseQueueName } from '../../shared/queues/queue-names'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

export interface DashboardQueuesDeps {
  backend: Pick<QueueBackend, 'createQueue' | 'listActiveOptions'>
  /** names of options by id (shared/ticket-options.ts `ticketOptionNames`) */
  optionNames: (ids: readonly string[]) => Promise<Map<string, string>>
  board: Pick<ReturnType<typeof createBullBoard>, 'replaceQueues'>
  log: Logger
  /** most queues shown at once; the least recently used beyond it are left out */
  maxQueues: number
  /** a list younger than this is not read again (ms) */
  maxAgeMs: number
}

interface ShownQueue {
  queue: Queue
  adapter: BullMQAdapter
}

export class DashboardQueues {
  private readonly shown = new Map<string, ShownQueue>()
  private refreshedAt = Number.NEGATIVE_INFINITY
  private refreshing: Promise<void> | undefined
  private closed = false

  constructor (private readonly deps: DashboardQueuesDeps) {}

  /** Option ids of the queues on the board, most recently used first. */
  get optionIds (): string[] {
    return [...this.shown.keys()]
  }

  /**
   * Reads the registry again when the list is older than `maxAgeMs`; callers
   * at the same moment share one read. Never throws: when Redis or PostgreSQL
   * fails, the board keeps the last list and the failure is logged.
   */
  async refreshIfStale (): Promise<void> {
    if (this.closed || Date.now() - this.refreshedAt < this.deps.maxAgeMs) return
    this.refreshing ??= this.refresh()
      .catch((err: unknown) => { this.deps.log.warn({ err }, 'could not refresh the dashboard queues; showing the last list') })
      .finally(() => { this.refreshing = undefined })
    await this.refreshing
  }

  /** Reads the registry and replaces the board's queues; throws when Redis or PostgreSQL fails. */
  async refresh (): Promise<void> {
    const { backend, optionNames, board, maxQueues } = this.deps
    const startedAt = Date.now()
    const registered = await backend.listActiveOptions()
    // Only the API registers ids, but a stray member must not break the query of names.
    const newest = registered
      .filter((o) => UUID.test(o.ticketOptionId))
      .sort((a, b) => b.lastUsedAt - a.lastUsedAt)
      .slice(0, maxQueues)
      .map((o) => o.ticketOptionId)
    const missing = newest.filter((id) => !this.shown.has(id))
    // Names never change (there is no route to rename an option), so only new queues are looked up.
    const names = missing.length > 0 ? await optionNames(missing) : new Map<string, string>()
    if (this.closed) return

    const wanted = new Set(newest)
    const dropped: Queue[] = []
    for (const [id, entry] of this.shown) {
      if (!wanted.has(id)) {
        this.shown.delete(id)
        dropped.push(entry.queue)
      }
    }
    const next = new Map<string, ShownQueue>()
    for (const id of newest) next.set(id, this.shown.get(id) ?? this.open(id, names.get(id)))
    this.shown.clear()
    for (const [id, entry] of next) this.shown.set(id, entry)

    board.replaceQueues([...this.shown.values()].map((entry) => entry.adapter))
    this.refreshedAt = startedAt
    // A dropped queue shares the API's connection: closing it only detaches its listeners.
    await Promise.all(dropped.map(async (queue) => { await queue.close() }))
  }

  private open (ticketOptionId: string, name: string | undefined): ShownQueue {
    const queue = this.deps.backend.createQueue(purchaseQueueName(ticketOptionId), { skipWaitingForReady: true })
    queue.on('error', (err) => { this.deps.log.warn({ err, ticketOptionId }, 'dashboard queue error') })
    const adapter = new BullMQAdapter(queue, {
      readOnlyMode: true,
      allowRetries: false,
      displayName: name ?? `unknown option ${ticketOptionId}`,
      description: `ticket option ${ticketOptionId}`,
    })
    return { queue, adapter }
  }

  async close (): Promise<void> {
    this.closed = true
    await this.refreshing
    const queues = [...this.shown.values()].map((entry) => entry.queue)
    this.shown.clear()
    this.deps.board.replaceQueues([])
    await Promise.all(queues.map(async (queue) => { await queue.close() }))
  }
}
