/**
 * One purchase is one trace (API.md "Where it runs", OTEL_*): an API and a
 * worker process, configured by OTEL_* variables alone, export to a local
 * OTLP receiver. 20 purchases at once (so some share a batch) give 20
 * traces, each with spans of both processes under one trace id, the queue's
 * spans and a database span; a batch's transaction shows in every trace it
 * committed. On both queue backends. And on the direct path (Redis), where
 * the API applies the purchases itself: still one trace per purchase, with
 * the API's own transaction span in it.
 */
import t from 'tap'
import type pg from 'pg'
import { randomUUID } from 'node:crypto'
import { PurchaseAttribute, PurchaseSpan } from '../../shared/telemetry/purchase-spans'
import { createTestEnvironment, eachQueueBackend, QUEUED } from '../support/environment'
import { callJson } from '../support/load'
import { startOtlpReceiver, type ReceivedSpan } from '../support/otlp-receiver'
import { startProcess } from '../support/processes'
import { waitFor } from '../support/wait'

const PURCHASES = 20
const SPAN_KIND_SERVER = 2
const SPAN_KIND_CLIENT = 3

/** OTEL_* for a process exporting to `endpoint` (the test's receiver), as service `name`. */
function otelEnv (endpoint: string, name: string): Record<string, string> {
  return {
    OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
    OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
    // Export within a fraction of a second, not the default 5 s.
    OTEL_BSP_SCHEDULE_DELAY: '100',
    OTEL_SERVICE_NAME: name,
  }
}

/** One buyer of `sellOut`: the answer's status and the purchase id (a 409 names none: read from the row recording the refusal). */
interface Buyer { userId: string, status: number, id: string }

/** PURCHASES buyers at once on a new option of 15 tickets, in the order they were sent. */
async function sellOut (apiUrl: string, sql: pg.Pool, name: string): Promise<{ optionId: string, buyers: Buyer[] }> {
  const option = await callJson(apiUrl, 'POST', '/ticket_options', { name, allocation: 15 })
  const optionId = option.body.id as string
  const users = Array.from({ length: PURCHASES }, () => randomUUID())
  const answers = await Promise.all(users.map(async (userId) =>
    await callJson(apiUrl, 'POST', `/ticket_options/${optionId}/purchases`, { user_id: userId, quantity: 1 })))
  const { rows } = await sql.query<{ id: string, user_id: string }>('select id, user_id from purchases where ticket_option_id = $1', [optionId])
  const idOf = new Map(rows.map((r) => [r.user_id, r.id]))
  return { optionId, buyers: users.map((userId, i) => ({ userId, status: answers[i]?.status ?? 0, id: idOf.get(userId) ?? '' })) }
}

eachQueueBackend(t, 'one trace per purchase', async (t, backendEnv) => {
  const receiver = await startOtlpReceiver(t)
  const { env, sql } = await createTestEnvironment(t, { ...backendEnv, ...QUEUED, DATABASE_POOL_SIZE: '4', WORKER_BATCH_SIZE: '10' })
  const api = await startProcess(t, 'api', { ...env, ...otelEnv(receiver.endpoint, 'test-api') })
  await startProcess(t, 'worker', { ...env, ...otelEnv(receiver.endpoint, 'test-worker') })

  const { optionId, buyers } = await sellOut(api.url, sql, 'traced')
  const ids = buyers.map((b) => b.id)
  t.same(buyers.map((b) => b.status).sort(), [...Array(15).fill(201), ...Array(5).fill(409)], '15 sold, 5 refused')
  t.equal(new Set(ids).size, PURCHASES, 'every purchase is recorded')

  /** The trace whose API wait span is this purchase's. */
  const traceOf = (id: string): ReceivedSpan[] => {
    const wait = receiver.spans.find((s) => s.name === PurchaseSpan.wait && s.attributes[PurchaseAttribute.requestId] === id)
    return wait === undefined ? [] : receiver.spans.filter((s) => s.traceId === wait.traceId)
  }
  // BullMQ's `process` span is in the trace of a job's (first) request: a bundle of
  // requests gathered by the API is one job (on Redis); each request still has its
  // own `purchase transaction` span from the worker.
  const complete = (spans: ReceivedSpan[]): boolean =>
    spans.some((s) => s.service === 'test-worker' && s.name === PurchaseSpan.transaction) &&
    spans.some((s) => s.service === 'test-api' && s.kind === SPAN_KIND_SERVER)
  const allTraced = await waitFor(() => ids.every((id) => complete(traceOf(id))), (done) => done, 20_000)
  t.ok(allTraced, 'every purchase traced from the API to the worker')
  // BullMQ's process span ends after the job's transaction span, so it may come in the worker's next export.
  const processed = await waitFor(() => ids.filter((id) => traceOf(id).some((s) => s.service === 'test-worker' && s.name.startsWith('process '))).length, (n) => n >= 1, 5000)
  t.ok(processed >= 1, `${processed} of ${PURCHASES} traces hold BullMQ's process span of their job`)

  const traceIds = new Set(ids.map((id) => traceOf(id)[0]?.traceId))
  t.equal(traceIds.size, PURCHASES, '20 purchases, 20 traces')
  let batched = 0
  for (const [i, id] of ids.entries()) {
    const spans = traceOf(id)
    const services = new Set(spans.map((s) => s.service))
    if (!(services.has('test-api') && services.has('test-worker'))) t.fail(`purchase ${id}: spans of ${[...services].join(', ')}`)
    const server = spans.find((s) => s.kind === SPAN_KIND_SERVER && s.service === 'test-api')
    if (server?.parentSpanId !== '') t.fail(`purchase ${id}: the HTTP request is not the root of its trace`)
    const transaction = spans.find((s) => s.name === PurchaseSpan.transaction)
    if (transaction?.kind !== SPAN_KIND_CLIENT || transaction.attributes['db.system'] !== 'postgresql') t.fail(`purchase ${id}: no database span`)
    const expected = buyers[i]?.status === 201 ? 'succeeded' : 'rejected'
    if (transaction?.attributes[PurchaseAttribute.outcome] !== expected) t.fail(`purchase ${id}: transaction outcome ${String(transaction?.attributes[PurchaseAttribute.outcome])}, answered ${expected}`)
    if (transaction?.attributes[PurchaseAttribute.requestId] !== id || transaction.attributes[PurchaseAttribute.ticketOptionId] !== optionId) t.fail(`purchase ${id}: transaction span names another purchase`)
    const size = Number(transaction?.attributes[PurchaseAttribute.batchSize])
    // Up to WORKER_BATCH_SIZE (10), or one bundle job's requests, which a batch takes whole (up to all 20 on Redis).
    if (!(size >= 1 && size <= PURCHASES)) t.fail(`purchase ${id}: batch size ${size}`)
    if (size > 1) batched++
    const wait = spans.find((s) => s.name === PurchaseSpan.wait)
    if (wait?.attributes[PurchaseAttribute.outcome] !== expected) t.fail(`purchase ${id}: the API's wait says ${String(wait?.attributes[PurchaseAttribute.outcome])}`)
    if (!spans.some((s) => s.name === PurchaseSpan.enqueue && s.service === 'test-api')) t.fail(`purchase ${id}: no enqueue span`)
    // Nothing personal: no span carries the buyer's id.
    const userId = buyers[i]?.userId ?? ''
    if (spans.some((s) => Object.values(s.attributes).includes(userId))) t.fail(`purchase ${id}: a span carries the user id`)
  }
  t.pass('each trace has the API\'s request, enqueue and wait, the worker\'s job and the transaction, with the right outcome')
  t.comment(`${batched} of ${PURCHASES} purchases were committed in a batch of several`)

  // Where a batch committed several, the others' transaction spans link to the one that ran.
  const linked = receiver.spans.filter((s) => s.name === PurchaseSpan.transaction && s.links.length > 0)
  for (const span of linked) {
    const [link] = span.links
    if (!receiver.spans.some((s) => s.spanId === link?.spanId && s.name === PurchaseSpan.transaction)) t.fail('a batch sibling links to no transaction span')
  }
  t.equal(linked.length, receiver.spans.filter((s) => s.name === PurchaseSpan.transaction && Number(s.attributes[PurchaseAttribute.batchSize]) > 1).length - new Set(linked.map((s) => s.links[0]?.spanId)).size, 'every other request of a batch links to the transaction that ran it')

  // One purchase's trace, for the README and the note.
  const sample = traceOf(ids[0] as string).sort((a, b) => a.startMs - b.startMs)
  t.comment(`one trace: ${sample.map((s) => `${s.service.replace('test-', '')} "${s.name}" ${s.durationMs.toFixed(1)} ms`).join('; ')}`)
})

t.test('the direct path: one trace per purchase too, with the API\'s own transaction span', async (t) => {
  const receiver = await startOtlpReceiver(t)
  const { env, sql } = await createTestEnvironment(t, { DATABASE_POOL_SIZE: '4' })
  // No worker: an option with nobody in line is applied by the API itself.
  const api = await startProcess(t, 'api', { ...env, ...otelEnv(receiver.endpoint, 'test-api') })
  const { buyers } = await sellOut(api.url, sql, 'traced directly')
  const ids = buyers.map((b) => b.id)
  t.same(buyers.map((b) => b.status).sort(), [...Array(15).fill(201), ...Array(5).fill(409)], '15 sold, 5 refused, with no worker')

  const transactionOf = (id: string): ReceivedSpan | undefined => receiver.spans.find((s) => s.name === PurchaseSpan.transaction && s.attributes[PurchaseAttribute.requestId] === id)
  await waitFor(() => ids.every((id) => transactionOf(id) !== undefined), (done) => done, 20_000)
  const traces = new Set<string>()
  for (const [i, id] of ids.entries()) {
    const transaction = transactionOf(id)
    if (transaction === undefined) { t.fail(`purchase ${id}: no transaction span`); continue }
    traces.add(transaction.traceId)
    const trace = receiver.spans.filter((s) => s.traceId === transaction.traceId)
    const server = trace.find((s) => s.kind === SPAN_KIND_SERVER)
    if (server === undefined || server.parentSpanId !== '') t.fail(`purchase ${id}: the transaction is not in its HTTP request's trace`)
    if (transaction.service !== 'test-api' || transaction.kind !== SPAN_KIND_CLIENT || transaction.attributes['db.system'] !== 'postgresql') t.fail(`purchase ${id}: not the API's database span`)
    const expected = buyers[i]?.status === 201 ? 'succeeded' : 'rejected'
    if (transaction.attributes[PurchaseAttribute.outcome] !== expected) t.fail(`purchase ${id}: outcome ${String(transaction.attributes[PurchaseAttribute.outcome])}, answered ${expected}`)
  }
  t.equal(traces.size, PURCHASES, '20 purchases, 20 traces, each with its HTTP request and its transaction')
})
