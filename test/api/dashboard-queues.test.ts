import { randomUUID } from 'node:crypto'
import type { BullMQAdapter } from '@bull-board/api/bullMQAdapter'
import type { Logger } from 'pino'
import t from 'tap'
import { DashboardQueues } from '../../api/dashboard/dashboard-queues'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { createTestEnvironment } from '../support/environment'

t.test('dashboard queue list', async (t) => {
  const { openQueues } = await createTestEnvironment(t)
  const backend = openQueues()
  const ids: string[] = Array.from({ length: 4 }, () => randomUUID())
  // ids[3] is the most recently used, ids[0] the least.
  for (const [i, id] of ids.entries()) await backend.touchOption(id, 1000 + i)

  const build = (overrides: { failNames?: () => boolean, maxQueues?: number } = {}) => {
    const boards: Array<Array<{ name: string, displayName: string, readOnly: boolean }>> = []
    const warnings: string[] = []
    let lookups = 0
    const queues = new DashboardQueues({
      backend,
      optionNames: async (wanted) => {
        lookups++
        if (overrides.failNames?.() === true) throw new Error('database down')
        return new Map(wanted.filter((id) => id !== ids[2]).map((id) => [id, `option ${ids.indexOf(id)}`]))
      },
      board: {
        replaceQueues: (adapters) => {
          boards.push(adapters.map((a) => ({ name: a.getName(), displayName: a.getDisplayName(), readOnly: (a as BullMQAdapter).readOnlyMode })))
        },
      },
      log: { warn: (_obj: unknown, message: string) => { warnings.push(message) } } as unknown as Logger,
      maxQueues: overrides.maxQueues ?? 3,
      maxAgeMs: 60_000,
    })
    t.teardown(async () => { await queues.close() })
    return { queues, boards, warnings, lookups: () => lookups }
  }

  t.test('shows the most recently used options, named, read-only, within the bound', async (t) => {
    const { queues, boards } = build()
    await queues.refresh()
    t.same(queues.optionIds, [ids[3], ids[2], ids[1]])
    t.same(boards.at(-1), [
      { name: purchaseQueueName(ids[3] as string), displayName: 'option 3', readOnly: true },
      { name: purchaseQueueName(ids[2] as string), displayName: `unknown option ${ids[2] as string}`, readOnly: true },
      { name: purchaseQueueName(ids[1] as string), displayName: 'option 1', readOnly: true },
    ])
  })

  t.test('a failed refresh keeps the last list and is logged; the next one recovers', async (t) => {
    let failing = false
    const { queues, boards, warnings } = build({ failNames: () => failing, maxQueues: 10 })
    await queues.refresh()
    t.equal(queues.optionIds.length, 4)
    const newcomer = randomUUID()
    await backend.touchOption(newcomer, 2000)
    t.teardown(async () => { await backend.releaseOption(newcomer, 2000) })
    failing = true
    await queues.refresh().then(() => t.fail('should throw'), (err: Error) => { t.equal(err.message, 'database down') })
    t.equal(boards.length, 1, 'the board was not touched')
    t.same(queues.optionIds, [ids[3], ids[2], ids[1], ids[0]])

    // refreshIfStale is what requests call: it never throws.
    const stale = build({ failNames: () => true })
    await stale.queues.refreshIfStale()
    t.same(stale.warnings, ['could not refresh the dashboard queues; showing the last list'])
    t.same(stale.boards, [])

    failing = false
    await queues.refresh()
    t.equal(queues.optionIds[0], newcomer, 'recovered')
    t.same(warnings, [])
  })

  t.test('a fresh list is not read again, and callers at once share one read', async (t) => {
    const { queues, lookups } = build()
    await Promise.all([queues.refreshIfStale(), queues.refreshIfStale(), queues.refreshIfStale()])
    t.equal(lookups(), 1)
    await queues.refreshIfStale()
    t.equal(lookups(), 1, 'younger than maxAgeMs: not read again')
  })

  t.test('options released from the registry drop off; names are looked up once', async (t) => {
    const { queues, boards, lookups } = build({ maxQueues: 10 })
    await queues.refresh()
    t.equal(lookups(), 1)
    await backend.releaseOption(ids[3] as string, 1003)
    t.teardown(async () => { await backend.touchOption(ids[3] as string, 1003) })
    await queues.refresh()
    t.same(queues.optionIds, [ids[2], ids[1], ids[0]])
    t.equal(boards.at(-1)?.length, 3)
    t.equal(lookups(), 1, 'no new option, no new lookup')
  })

  t.test('close empties the board and stops refreshing', async (t) => {
    const { queues, boards, lookups } = build()
    await queues.refresh()
    await queues.close()
    t.same(boards.at(-1), [])
    await queues.refreshIfStale()
    t.equal(lookups(), 1)
  })
})
