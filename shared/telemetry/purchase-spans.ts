/**
 * The spans of one purchase (or hold, confirmation, release, cancellation),
 * one trace from the HTTP request to the commit and back:
 *
 *   API     POST /ticket_options/:id/purchases        (http, fastify)
 *             purchase enqueue                        (line number, add)
 *               add / addBulk purchases-{<option>}    (bullmq-otel)
 *             purchase wait                           (until the outcome)
 *   worker  process purchases-{<option>}              (bullmq-otel; parent: the job's trace context)
 *             purchase transaction                    (BEGIN..COMMIT of its batch; pg spans below it)
 *
 * A batch commits several requests in one transaction while one job is
 * processed; each other request of it gets a `purchase transaction` span in
 * its own trace too, with the same times and a link to the one that ran it.
 *
 * Attributes are ids, counts and outcomes, never personal data. Every helper
 * asks `tracingOn()` first: with tracing off they cost one boolean.
 */
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Link, type Span } from '@opentelemetry/api'
import type { Telemetry } from 'bullmq'
import { jobIdOf, type SaleRequest } from '../purchases/sale-request'
import { tracingOn } from './tracing'

export const TRACER_NAME = 'ticket-allocation'

/** Attribute names, so every span says the same thing the same way. */
export const PurchaseAttribute = {
  ticketOptionId: 'ticket_option.id',
  /** the purchase's, reservation's or request's id (its job id) */
  requestId: 'purchase.id',
  kind: 'purchase.kind',
  line: 'purchase.line',
  batchSize: 'purchase.batch_size',
  /** succeeded, rejected, held, confirmed, ... or pending when the API answered 202 */
  outcome: 'purchase.outcome',
} as const

/** Span names, for the tests and the README. */
export const PurchaseSpan = {
  enqueue: 'purchase enqueue',
  wait: 'purchase wait',
  transaction: 'purchase transaction',
} as const

let bullTelemetry: Telemetry | undefined

/** BullMQ's telemetry for Queue and Worker options; undefined when tracing is off. */
export function queueTelemetry (): Telemetry | undefined {
  if (!tracingOn()) return undefined
  if (bullTelemetry === undefined) {
    // Required here, not imported: loaded only when tracing is on.
    const { BullMQOtel } = require('bullmq-otel') as typeof import('bullmq-otel')
    bullTelemetry = new BullMQOtel({ tracerName: TRACER_NAME }) as unknown as Telemetry
  }
  return bullTelemetry
}

/**
 * The active trace context, serialised the way bullmq-otel does (JSON of the
 * W3C trace context headers), for a job's data and its telemetry metadata;
 * undefined when tracing is off.
 */
export function currentTraceContext (): string | undefined {
  if (!tracingOn()) return undefined
  const carrier: Record<string, string> = {}
  propagation.inject(context.active(), carrier)
  return Object.keys(carrier).length === 0 ? undefined : JSON.stringify(carrier)
}

function contextOf (traceContext: string | undefined) {
  if (traceContext === undefined) return ROOT_CONTEXT
  try {
    return propagation.extract(ROOT_CONTEXT, JSON.parse(traceContext) as Record<string, string>)
  } catch {
    return ROOT_CONTEXT // a job of a broken or hostile writer: its span starts a trace of its own
  }
}

/** What every span of a request says about it. */
export function requestAttributes (request: SaleRequest): Attributes {
  return {
    [PurchaseAttribute.ticketOptionId]: request.ticketOptionId,
    [PurchaseAttribute.requestId]: jobIdOf(request),
    [PurchaseAttribute.kind]: request.kind ?? 'purchase',
    ...(request.line === undefined ? {} : { [PurchaseAttribute.line]: request.line }),
  }
}

/**
 * Runs `fn` in a new active span (a child of the active one), ended when
 * `fn` settles, with an error status when it throws. Tracing off: `fn(undefined)`,
 * and `attributes` is never called.
 */
export function inSpan<T> (name: string, attributes: () => Attributes, fn: (span: Span | undefined) => Promise<T>, kind = SpanKind.INTERNAL): Promise<T> {
  // Tracing off: `fn`'s own promise, without an async frame around it (a few on every purchase's path).
  if (!tracingOn()) return fn(undefined)
  return trace.getTracer(TRACER_NAME).startActiveSpan(name, { kind, attributes: attributes() }, async (span) => {
    try {
      return await fn(span)
    } catch (err) {
      span.recordException(err as Error)
      span.setStatus({ code: SpanStatusCode.ERROR, message: (err as Error).message })
      throw err
    } finally {
      span.end()
    }
  })
}

/** Sets attributes on the active span (BullMQ's `process` span in the worker); nothing when tracing is off. */
export function annotateActiveSpan (attributes: () => Attributes): void {
  if (!tracingOn()) return
  trace.getActiveSpan()?.setAttributes(attributes())
}

/** What a batch's transaction span says: PostgreSQL, and the batch. */
function transactionAttributes (batchSize: number): Attributes {
  return {
    'db.system': 'postgresql',
    'db.system.name': 'postgresql',
    'db.operation.name': 'apply purchase batch',
    [PurchaseAttribute.batchSize]: batchSize,
  }
}

/**
 * Runs one try of a batch's transaction (`fn`) in a `purchase transaction`
 * span of `held`, the request whose job is being processed; the queries of
 * the transaction are its children.
 */
export function inTransactionSpan<T> (held: SaleRequest, fn: (span: Span | undefined) => Promise<T>): Promise<T> {
  return inSpan(PurchaseSpan.transaction, () => ({ ...transactionAttributes(1), ...requestAttributes(held) }), fn, SpanKind.CLIENT)
}

/**
 * After the commit: the held request's span gets the batch size and its
 * outcome, and every other request the transaction committed gets a span of
 * the same times in its own trace, linked to this one. `label` names an
 * outcome's status. Tracing off (no span): nothing is built, no label made.
 */
export function transactionCommitted<O extends { id: string }> (span: Span | undefined, held: SaleRequest, batch: readonly SaleRequest[], outcomes: readonly O[], label: (outcome: O) => string, startTime: number): void {
  if (span === undefined) return
  const endTime = Date.now()
  const statusOf = new Map(outcomes.map((o) => [o.id, label(o)]))
  const heldId = jobIdOf(held)
  span.setAttributes({ [PurchaseAttribute.batchSize]: batch.length, [PurchaseAttribute.outcome]: statusOf.get(heldId) ?? 'not in this batch' })
  const tracer = trace.getTracer(TRACER_NAME)
  const links: Link[] = [{ context: span.spanContext() }]
  for (const request of batch) {
    const id = jobIdOf(request)
    if (id === heldId) continue
    tracer.startSpan(PurchaseSpan.transaction, {
      kind: SpanKind.CLIENT,
      startTime,
      links,
      attributes: { ...transactionAttributes(batch.length), ...requestAttributes(request), [PurchaseAttribute.outcome]: statusOf.get(id) ?? 'unknown' },
    }, contextOf(request.traceContext)).end(endTime)
  }
}
