/**
 * Server-Sent Events of queued purchases and holds (API.md "Waiting in line"):
 * a `position` event each time a buyer's place in line changes, at most
 * 4 a second, then one `outcome` event with the status route's body, and the
 * stream ends. Thousands of streams cost no connection and no polling each:
 * positions fan out from the batch messages this process receives anyway
 * (queue-line.ts), outcomes from the outcome waiter, and one sweep every few
 * seconds asks PostgreSQL, in one query for all streams, which of them were
 * decided while their message was lost. A stream whose client goes away
 * leaves no listener, timer or waiter behind.
 */
import type { Logger } from 'pino'
import type { OutcomeWaiter } from './outcome-waiter'
import type { Place, QueueLine } from './queue-line'

/** At most 4 position events a second per stream (API.md). */
export const POSITION_INTERVAL_MS = 250
/** How often streams whose outcome message was lost are looked up, all in one query (ms). */
export const STREAM_SWEEP_MS = 3000
/** A waiter of a stream is renewed this often; the outcome usually arrives long before (ms). */
const STREAM_WAIT_MS = 60_000

export interface StreamEvent {
  event: 'position' | 'outcome'
  data: unknown
}

export interface FollowedRequest {
  kind: 'purchase' | 'reservation'
  ticketOptionId: string
  /** the purchase's or reservation's id, which is its job id */
  id: string
  /** its number in the option's line; null for a job of older code (no positions then) */
  ticket: number | null
  /** the status route's body once decided, null while pending */
  settled: () => Promise<unknown>
  send: (event: StreamEvent) => Promise<void>
  end: () => void
}

interface OpenStream {
  request: FollowedRequest
  /** looks the outcome up now */
  check: () => void
}

export interface OutcomeStreamsDeps {
  waiter: OutcomeWaiter
  line: QueueLine
  log: Logger
  /** which of these ids are recorded (one query) */
  recorded: (purchaseIds: string[], reservationIds: string[]) => Promise<Set<string>>
  /** told how many streams are open, whenever that changes */
  onCount?: (open: number) => void
  sweepMs?: number
}

export class OutcomeStreams {
  private readonly open = new Map<string, Set<OpenStream>>()
  private count = 0
  private readonly sweeper: NodeJS.Timeout

  constructor (private readonly deps: OutcomeStreamsDeps) {
    this.sweeper = setInterval(() => {
      this.sweep().catch((err: unknown) => { deps.log.warn({ err }, 'could not look up the outcomes of open event streams') })
    }, deps.sweepMs ?? STREAM_SWEEP_MS)
    this.sweeper.unref()
  }

  /** Streams open now. */
  get size (): number {
    return this.count
  }

  /**
   * Follows one queued request until its outcome; returns the function that
   * stops following it (the client went away). `first` is its place now.
   */
  follow (request: FollowedRequest, first: Place | null): () => void {
    const { waiter, line, log } = this.deps
    let stopped = false
    let lastSentAt = 0
    let lastPosition = first?.position ?? -1
    let timer: NodeJS.Timeout | undefined
    let wait: ReturnType<OutcomeWaiter['wait']> | undefined
    let finishing = false

    const stop = (): void => {
      if (stopped) return
      stopped = true
      clearTimeout(timer)
      wait?.cancel()
      unwatch()
      const set = this.open.get(request.id)
      set?.delete(entry)
      if (set?.size === 0) this.open.delete(request.id)
      this.count--
      this.deps.onCount?.(this.count)
    }

    const finish = async (): Promise<void> => {
      if (stopped || finishing) return
      finishing = true
      try {
        const body = await request.settled()
        if (body === null || stopped) return
        clearTimeout(timer)
        await request.send({ event: 'outcome', data: body })
        stop()
        request.end()
      } catch (err) {
        log.warn({ err, id: request.id }, 'could not send an outcome event')
      } finally {
        finishing = false
      }
    }

    const sendPosition = async (): Promise<void> => {
      timer = undefined
      if (stopped || request.ticket === null) return
      const place = await line.place(request.ticketOptionId, request.ticket)
      if (stopped || place.position === lastPosition) return
      lastPosition = place.position
      lastSentAt = Date.now()
      await request.send({ event: 'position', data: place })
    }

    const moved = (): void => {
      if (stopped || timer !== undefined || request.ticket === null) return
      const due = Math.max(0, lastSentAt + POSITION_INTERVAL_MS - Date.now())
      timer = setTimeout(() => { sendPosition().catch((err: unknown) => { log.warn({ err, id: request.id }, 'could not send a position event') }) }, due)
    }

    const awaitOutcome = (): void => {
      if (stopped) return
      wait = waiter.wait(request.id, STREAM_WAIT_MS)
      void wait.promise.then(async (outcome) => {
        if (stopped) return
        if (outcome !== null) await finish()
        else awaitOutcome() // renewed; the sweep catches a lost message meanwhile
      })
    }

    const unwatch = line.watch(request.ticketOptionId, moved)
    const entry: OpenStream = { request, check: () => { void finish() } }
    let set = this.open.get(request.id)
    if (set === undefined) {
      set = new Set()
      this.open.set(request.id, set)
    }
    set.add(entry)
    this.count++
    this.deps.onCount?.(this.count)
    if (first !== null) lastSentAt = Date.now()
    awaitOutcome()
    // Decided between the status read and the registration: its message went to nobody.
    void finish()
    return stop
  }

  private async sweep (): Promise<void> {
    if (this.open.size === 0) return
    const purchases: string[] = []
    const reservations: string[] = []
    for (const [id, set] of this.open) {
      const first = set.values().next().value
      if (first?.request.kind === 'reservation') reservations.push(id)
      else purchases.push(id)
    }
    const decided = await this.deps.recorded(purchases, reservations)
    for (const id of decided) for (const entry of this.open.get(id) ?? []) entry.check()
  }

  close (): void {
    clearInterval(this.sweeper)
  }
}
