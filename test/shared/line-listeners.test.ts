/**
 * LineListeners (shared/queues/line-listeners.ts): the rules by which a
 * process knows it is alone on the outcome channel. Its count of the
 * channel's subscribers is handed in, so each rule is driven here without a
 * server; the Redis backend's use of it (PUBSUB NUMSUB, what is published and
 * what is heard in-process) is tested on a real Redis in
 * test/api/direct-purchases.test.ts.
 */
import t from 'tap'
import { LineListeners } from '../../shared/queues/line-listeners'
import { sleep } from '../support/wait'

/** A count the test answers when it likes. */
function pendingCount (): { count: () => Promise<number>, answer: (n: number | Error) => void } {
  const asked: Array<(n: number | Error) => void> = []
  return {
    count: async () => await new Promise<number>((resolve, reject) => { asked.push((n) => { if (n instanceof Error) reject(n); else resolve(n) }) }),
    answer: (n) => { asked.shift()?.(n) },
  }
}

const settle = async (): Promise<void> => { await sleep(5) }

t.test('others are taken to listen until this process is subscribed and counted alone', async (t) => {
  const { count, answer } = pendingCount()
  const listeners = new LineListeners(count, 60_000)
  t.teardown(() => { listeners.stop() })
  t.equal(listeners.others, true, 'before it subscribed')
  listeners.subscribed()
  t.equal(listeners.others, true, 'while the count is out')
  answer(1)
  await settle()
  t.equal(listeners.others, false, 'alone: only its own subscription')
  listeners.lost()
  t.equal(listeners.others, true, 'its subscription down: others may listen unseen')
  listeners.subscribed()
  answer(2)
  await settle()
  t.equal(listeners.others, true, 'another subscriber counted')
  listeners.subscribed()
  answer(new Error('no Redis'))
  await settle()
  t.equal(listeners.others, true, 'a count that failed says nothing: others are taken to listen')
})

t.test('a listening message of another process counts at once, even against a count taken before it came; its own does not', async (t) => {
  const { count, answer } = pendingCount()
  const listeners = new LineListeners(count, 60_000)
  t.teardown(() => { listeners.stop() })
  listeners.subscribed()
  answer(1)
  await settle()
  t.equal(listeners.takeListening(listeners.listeningMessage), true, 'its own message is a listening message')
  t.equal(listeners.others, false, 'but no other listener')
  t.equal(listeners.takeListening('{"type":"applied","ticketOptionId":"o","outcomes":[]}'), false, 'an outcome message is not')

  listeners.subscribed() // a count goes out
  const another = new LineListeners(async () => 2, 60_000)
  t.equal(listeners.takeListening(another.listeningMessage), true)
  t.equal(listeners.others, true, 'another process listens: at once')
  answer(1) // taken before that process subscribed
  await settle()
  t.equal(listeners.others, true, 'an older count does not undo it')
  listeners.subscribed()
  answer(1)
  await settle()
  t.equal(listeners.others, false, 'a count taken after it does (that process left)')
})

t.test('the count is taken again every checkMs', async (t) => {
  let answers = [1, 1, 2]
  const listeners = new LineListeners(async () => answers.shift() ?? 2, 30)
  t.teardown(() => { listeners.stop() })
  listeners.subscribed()
  await settle()
  t.equal(listeners.others, false)
  await sleep(150)
  t.equal(listeners.others, true, 'a later count found another subscriber')
  answers = []
})
