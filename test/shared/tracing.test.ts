/**
 * shared/telemetry/tracing.ts: the OTEL_* variables alone switch tracing;
 * off, no part of the SDK, its exporters or bullmq-otel is loaded and the
 * span helpers only call through. test/deploy/tracing.test.ts follows real
 * purchases through two processes.
 */
import t from 'tap'
import { currentTraceContext, inSpan, queueTelemetry } from '../../shared/telemetry/purchase-spans'
import { startTracing, stopTracing, tracingOn, tracingWanted } from '../../shared/telemetry/tracing'
import { startOtlpReceiver } from '../support/otlp-receiver'

const loadedTelemetry = (): string[] => Object.keys(require.cache).filter((file) => /node_modules\/(@opentelemetry\/(sdk-|exporter-|instrumentation)|@fastify\/otel|bullmq-otel)/.test(file))

t.test('which variables switch tracing on', async (t) => {
  t.equal(tracingWanted({}), false, 'nothing set: off')
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: '' }), false, 'an empty endpoint: off')
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }), true)
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://collector:4318/v1/traces' }), true, 'the traces-only endpoint')
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_SDK_DISABLED: 'true' }), false, 'OTEL_SDK_DISABLED wins')
  t.equal(tracingWanted({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_TRACES_EXPORTER: 'none' }), false, 'OTEL_TRACES_EXPORTER=none wins')
  t.equal(tracingWanted({ OTEL_SERVICE_NAME: 'api' }), false, 'a service name alone exports nothing')
})

t.test('off: nothing of the SDK is loaded, and the helpers only call through', async (t) => {
  t.equal(startTracing('test'), false)
  t.equal(tracingOn(), false)
  t.equal(queueTelemetry(), undefined, 'queues and workers get no telemetry')
  t.equal(currentTraceContext(), undefined, 'jobs carry no trace context')
  let attributesAsked = false
  const result = await inSpan('x', () => { attributesAsked = true; return {} }, async (span) => span === undefined ? 'no span' : 'span')
  t.equal(result, 'no span')
  t.equal(attributesAsked, false, 'no attributes are built')
  t.same(loadedTelemetry(), [], 'no SDK, exporter, instrumentation or bullmq-otel module in the process')
  await stopTracing() // nothing to stop
})

t.test('on: the SDK starts, exports, jobs carry a W3C trace context, and it stops', async (t) => {
  const receiver = await startOtlpReceiver(t)
  Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })
  t.teardown(() => { delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT; delete process.env.OTEL_EXPORTER_OTLP_PROTOCOL })
  t.equal(startTracing('tracing-test'), true)
  t.equal(tracingOn(), true)
  t.equal(startTracing('tracing-test'), true, 'a second start is the same SDK')
  t.ok(loadedTelemetry().length > 0, 'the SDK is loaded now')
  t.ok(queueTelemetry(), 'queues and workers get BullMQ telemetry')
  t.equal(queueTelemetry(), queueTelemetry(), 'one telemetry object per process')
  const carried = await inSpan('purchase enqueue', () => ({ 'purchase.id': 'x' }), async (span) => {
    t.ok(span, 'a span is open')
    return currentTraceContext()
  })
  const headers = JSON.parse(carried ?? '{}') as Record<string, string>
  t.match(headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, 'the job carries the span as a W3C traceparent')
  await t.rejects(inSpan('failing', () => ({}), async () => { throw new Error('refused') }), /refused/, 'an error passes through the span')
  await stopTracing()
  t.equal(tracingOn(), false, 'stopped')
  t.same(receiver.spans.map((s) => [s.service, s.name]).sort(), [['tracing-test', 'failing'], ['tracing-test', 'purchase enqueue']], 'the stop exported what was buffered, named after the service')
  t.equal(receiver.spans.find((s) => s.name === 'purchase enqueue')?.traceId, headers.traceparent?.split('-')[1], 'the carried context is the span\'s')
})

t.test('a collector that is down does not fail the stop', async (t) => {
  Object.assign(process.env, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:9', OTEL_EXPORTER_OTLP_TIMEOUT: '200' })
  t.teardown(() => { delete process.env.OTEL_EXPORTER_OTLP_ENDPOINT; delete process.env.OTEL_EXPORTER_OTLP_TIMEOUT })
  t.equal(startTracing('tracing-test'), true)
  await inSpan('lost', () => ({}), async () => {})
  await t.resolves(stopTracing())
})
