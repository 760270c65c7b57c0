/**
 * Whether a process besides this one hears the outcome channel: an API
 * alone on it need not publish its direct batches' outcomes to Redis only to
 * read them back itself (the Redis backend's publishApplied then hands them
 * to its own listener in-process). Measured side by side on a single buyer,
 * publishing and hearing back its own announcements cost 3–7 % of the API's
 * CPU, the largest single piece beyond the direct design's (README.md,
 * Performance).
 *
 * Known from two sources:
 * - a count of the channel's subscribers (PUBSUB NUMSUB) once subscribed,
 *   then every LINE_LISTENERS_CHECK_MS: one command a second;
 * - a message each process sends once it has (re)subscribed
 *   (`listeningMessage`): the others publish again at once, not up to a
 *   second later. A message lost meanwhile is no worse than a lost
 *   publish: a waiter reads PostgreSQL before it answers, a line reads Redis.
 * Until this process is subscribed, and whenever its subscription is down,
 * it takes others to listen: everything is published, as before.
 */
import { randomUUID } from 'node:crypto'

/** How often the channel's subscribers are counted (ms). */
export const LINE_LISTENERS_CHECK_MS = 1000

/** What every listening message starts with: tells it apart from outcome messages before any parsing. */
const LISTENING_PREFIX = '{"type":"listening"'

export class LineListeners {
  /** Sent on the channel by this process once subscribed; older APIs read it as no message at all. */
  readonly listeningMessage = `${LISTENING_PREFIX},"from":"${randomUUID()}"}`
  private live = false
  private othersCounted = true
  private heard = 0
  private timer: NodeJS.Timeout | undefined

  /** `countListeners`: the channel's subscribers, this process's among them. */
  constructor (private readonly countListeners: () => Promise<number>, private readonly checkMs = LINE_LISTENERS_CHECK_MS) {}

  /** False only while this process is subscribed and was found alone on the channel. */
  get others (): boolean {
    return !this.live || this.othersCounted
  }

  /** This process's subscription is (again) in place: counted now, then every `checkMs`. */
  subscribed (): void {
    this.live = true
    if (this.timer === undefined) {
      this.timer = setInterval(() => { void this.check() }, this.checkMs)
      this.timer.unref()
    }
    void this.check()
  }

  /** This process's subscription is down (its connection closed): others may listen unseen. */
  lost (): void {
    this.live = false
  }

  /**
   * Reads a raw message of the channel: true when it was a listening
   * message (another process's counts it as a listener; this one's own is
   * dropped), which is then no outcome message.
   */
  takeListening (raw: string): boolean {
    if (!raw.startsWith(LISTENING_PREFIX)) return false
    if (raw !== this.listeningMessage) {
      this.heard++
      this.othersCounted = true
    }
    return true
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private async check (): Promise<void> {
    const heard = this.heard
    try {
      const count = await this.countListeners()
      // A process that said it listens after the count was taken may not be in it.
      if (this.heard === heard) this.othersCounted = count > 1
    } catch {
      this.othersCounted = true
    }
  }
}
