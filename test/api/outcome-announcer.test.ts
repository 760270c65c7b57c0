/**
 * OutcomeAnnouncer (api/purchasing/outcome-announcer.ts): a direct batch's
 * outcomes are announced within the delay, each option's batches of that
 * time as one message; a publish that fails is logged, and the rest still go.
 */
import t from 'tap'
import pino from 'pino'
import { OutcomeAnnouncer } from '../../api/purchasing/outcome-announcer'
import type { AppliedMessage } from '../../shared/purchases/purchase-outcomes'
import type { PurchaseRecord } from '../../shared/purchases/sale-store'
import { sleep } from '../support/wait'

type Applied = Omit<AppliedMessage, 'type'>

const outcome = (id: string): PurchaseRecord => ({
  id, ticket_option_id: 'o', user_id: 'u', quantity: 1, status: 'succeeded', reason: null, available: null, used: null, reservation_id: null, cancelled_at: null, created_at: '2026-11-30T00:00:00.000Z',
})
const batch = (ticketOptionId: string, appliedLine: number | null, ids: string[], at: number): Applied => ({ ticketOptionId, appliedLine, count: ids.length, at, outcomes: ids.map(outcome) })

t.test('batches of the same milliseconds go as one message per option, with the highest line, the sum of counts and every outcome in order', async (t) => {
  const published: Applied[] = []
  const announcer = new OutcomeAnnouncer(async (m) => { published.push(m) }, 30, pino({ level: 'silent' }))
  announcer.add(batch('a', 1, ['a1'], 100))
  announcer.add(batch('b', null, ['b1'], 101))
  announcer.add(batch('a', 3, ['a2', 'a3'], 102))
  announcer.add(batch('a', 0, [], 103)) // nothing to tell
  t.same(published, [], 'nothing before the delay')
  await sleep(80)
  t.same(published.map((m) => ({ ...m, outcomes: m.outcomes.map((o) => o.id) })), [
    { ticketOptionId: 'a', appliedLine: 3, count: 3, at: 102, outcomes: ['a1', 'a2', 'a3'] },
    { ticketOptionId: 'b', appliedLine: null, count: 1, at: 101, outcomes: ['b1'] },
  ])
  announcer.add(batch('a', 4, ['a4'], 104))
  await announcer.flush()
  t.same(published.map((m) => m.outcomes.map((o) => o.id)), [['a1', 'a2', 'a3'], ['b1'], ['a4']], 'flush announces what is pending at once')
  await sleep(50)
  t.equal(published.length, 3, 'and its timer is gone')
})

t.test('a publish that fails is logged, and the other options\' messages still go', async (t) => {
  const published: string[] = []
  const warnings: unknown[] = []
  const log = pino({ level: 'warn' }, { write: (line: string) => { warnings.push(JSON.parse(line)) } })
  const announcer = new OutcomeAnnouncer(async (m) => {
    if (m.ticketOptionId === 'a') throw new Error('no Redis')
    published.push(m.ticketOptionId)
  }, 5, log)
  announcer.add(batch('a', 1, ['a1'], 1))
  announcer.add(batch('b', 1, ['b1'], 1))
  await announcer.flush()
  t.same(published, ['b'])
  t.match(warnings, [{ msg: 'could not announce direct outcomes', ticketOptionId: 'a', err: { message: 'no Redis' } }])
})
