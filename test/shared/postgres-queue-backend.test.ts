/**
 * What the PostgreSQL queue backend does that Redis does not need
 * (shared/queues/postgres-queue-backend.ts): outcome messages split below
 * NOTIFY's payload limit, channel names that fit an identifier, a LISTEN
 * connection that comes back by itself, and arrival order kept when BullMQ
 * puts a job back at the tail of its queue.
 */
import { randomUUID } from 'node:crypto'
import pino from 'pino'
import t from 'tap'
import { parseLineMessage, type AppliedMessage } from '../../shared/purchases/purchase-outcomes'
import { appliedPayloads, channelName, NOTIFY_PAYLOAD_MAX_BYTES } from '../../shared/queues/postgres-queue-backend'
import { openQueueBackend } from '../../shared/queues/queue-backend'
import { PURCHASE_JOB_NAME, purchaseQueueName } from '../../shared/queues/queue-names'
import type { PurchaseRequest } from '../../shared/purchases/sale-request'
import { buy, createOption, setUp, startTestWorker, TEST_USER } from '../support/app'
import { unbalancedOptions } from '../support/environment'
import { waitFor } from '../support/wait'

const outcome = (i: number) => ({
  id: randomUUID(),
  ticket_option_id: randomUUID(),
  user_id: TEST_USER,
  quantity: i,
  status: 'succeeded' as const,
  created_at: new Date(0).toISOString(),
})

t.test('a batch of outcomes is split into payloads under the NOTIFY limit, its count on the first only', async (t) => {
  const message: Omit<AppliedMessage, 'type'> = { ticketOptionId: randomUUID(), appliedLine: 250, count: 250, at: 1_700_000_000_000, outcomes: Array.from({ length: 250 }, (_, i) => outcome(i)) as AppliedMessage['outcomes'] }
  const payloads = appliedPayloads(message)
  t.ok(payloads.length > 1, `${payloads.length} payloads`)
  for (const p of payloads) t.ok(Buffer.byteLength(p) <= NOTIFY_PAYLOAD_MAX_BYTES, `${Buffer.byteLength(p)} bytes`)
  const parsed = payloads.map((p) => parseLineMessage(p))
  t.same(parsed.flatMap((m) => m?.type === 'applied' ? m.outcomes.map((o) => o.id) : []), message.outcomes.map((o) => o.id), 'every outcome, once, in order')
  t.same(parsed.map((m) => m?.type === 'applied' ? m.count : -1), [250, ...Array(payloads.length - 1).fill(0)], 'the rate counts the batch once')
  t.ok(parsed.every((m) => m?.type === 'applied' && m.appliedLine === 250 && m.ticketOptionId === message.ticketOptionId))
  t.same(appliedPayloads({ ...message, outcomes: [] }), [], 'nothing to send for no outcomes')
})

t.test('channel names fit an identifier: a long prefix is hashed', async (t) => {
  t.equal(channelName('tickets:purchase-outcomes'), 'tickets:purchase-outcomes')
  const long = `${'p'.repeat(64)}:purchase-outcomes`
  t.match(channelName(long), /^ch_[0-9a-f]{40}$/)
  t.equal(channelName(long), channelName(long), 'the same for every process')
})

t.test('the LISTEN connection, killed, comes back and buyers hear their outcomes again', async (t) => {
  const { app, sql, prefix } = await setUp(t, { env: { QUEUE_BACKEND: 'postgres', PURCHASE_WAIT_MS: '3000' } })
  const id = await createOption(app, 10)
  t.equal((await buy(app, id)).statusCode, 201)
  const killed = await sql.query<{ pid: number }>('select pid, pg_terminate_backend(pid) from pg_stat_activity where application_name = $1', [`${prefix}-api-listener`])
  t.equal(killed.rowCount, 1, "the API's LISTEN connection was killed")
  // Back within a few hundred ms, on a new backend: the killed one may still be listed, LISTEN its last query, while it exits.
  const listening = async (): Promise<number[]> => (await sql.query<{ pid: number }>("select pid from pg_stat_activity where application_name = $1 and query ilike 'LISTEN%'", [`${prefix}-api-listener`])).rows.map((r) => r.pid)
  const isBack = (pids: number[]): boolean => pids.length === 1 && pids[0] !== killed.rows[0]?.pid
  t.ok(isBack(await waitFor(listening, isBack)), 'listening again, on a new connection')
  const after = await buy(app, id)
  t.equal(after.statusCode, 201)
  t.ok(after.tookMs < 2000, `answered by its notification in ${after.tookMs} ms, not at the end of the wait`)
  t.same(await unbalancedOptions(sql), [])
})

t.test('a request waiting behind its own successor (as BullMQ on PostgreSQL requeues) is still applied first', async (t) => {
  const { app, sql, config } = await setUp(t, { worker: false, env: { QUEUE_BACKEND: 'postgres' } })
  const id = await createOption(app, 10)
  const queues = openQueueBackend(config, pino({ level: 'silent' }), 'worker')
  t.teardown(async () => { await queues.close() })
  const queue = queues.createQueue(purchaseQueueName(id))
  t.teardown(async () => { await queue.close() })
  await queue.setGlobalConcurrency(1)
  // Line 1 sits behind lines 2 and 3 in the queue, as after a hand-back or a stalled worker.
  const job = (line: number, quantity: number): PurchaseRequest => ({ purchaseId: randomUUID(), ticketOptionId: id, userId: TEST_USER, quantity, requestId: `line-${line}`, enqueuedAt: Date.now(), line })
  const [first, second, third] = [job(1, 6), job(2, 6), job(3, 4)]
  for (const data of [second, third, first] as PurchaseRequest[]) await queue.add(PURCHASE_JOB_NAME, data, { jobId: data.purchaseId })
  await queues.touchOption(id, Date.now())
  await startTestWorker(t, { ...config, workerBatchSize: 1 })
  const rows = await waitFor(async () => (await sql.query('select id, status from purchases where ticket_option_id = $1 order by seq', [id])).rows, (r) => r.length === 3)
  t.same(rows.map((r: { id: string }) => r.id), [first, second, third].map((j) => j?.purchaseId), 'applied in line order')
  t.same(rows.map((r: { status: string }) => r.status), ['succeeded', 'rejected', 'succeeded'], '6 fits, then 6 does not, then 4 does')
})
