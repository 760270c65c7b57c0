/**
 * A local OTLP/HTTP receiver for tests: it takes what the processes' SDKs
 * export (set OTEL_EXPORTER_OTLP_PROTOCOL=http/json) and keeps every span,
 * flattened with its service name. Closed in teardown.
 * @see https://opentelemetry.io/docs/specs/otlp/#otlphttp
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import type { Teardown } from './environment'

export interface ReceivedSpan {
  service: string
  traceId: string
  spanId: string
  parentSpanId: string
  name: string
  /** OTLP's enum: 1 internal, 2 server, 3 client, 4 producer, 5 consumer */
  kind: number
  durationMs: number
  startMs: number
  attributes: Record<string, string | number | boolean>
  links: Array<{ traceId: string, spanId: string }>
}

interface OtlpValue { stringValue?: string, intValue?: string | number, boolValue?: boolean, doubleValue?: number }
interface OtlpAttribute { key: string, value: OtlpValue }
interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  startTimeUnixNano: string
  endTimeUnixNano: string
  attributes?: OtlpAttribute[]
  links?: Array<{ traceId: string, spanId: string }>
}
interface OtlpExport {
  resourceSpans?: Array<{ resource?: { attributes?: OtlpAttribute[] }, scopeSpans?: Array<{ spans?: OtlpSpan[] }> }>
}

function valueOf (value: OtlpValue): string | number | boolean {
  if (value.stringValue !== undefined) return value.stringValue
  if (value.intValue !== undefined) return Number(value.intValue)
  if (value.doubleValue !== undefined) return value.doubleValue
  return value.boolValue ?? ''
}

function attributesOf (list: OtlpAttribute[] = []): Record<string, string | number | boolean> {
  return Object.fromEntries(list.map((a) => [a.key, valueOf(a.value)]))
}

export interface OtlpReceiver {
  /** for OTEL_EXPORTER_OTLP_ENDPOINT */
  endpoint: string
  spans: ReceivedSpan[]
  /** how many export requests came in */
  exports: () => number
}

export async function startOtlpReceiver (t: Teardown): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = []
  let exports = 0
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') {
        exports++
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpExport
        for (const resourceSpans of body.resourceSpans ?? []) {
          const service = String(attributesOf(resourceSpans.resource?.attributes)['service.name'] ?? '')
          for (const scope of resourceSpans.scopeSpans ?? []) {
            for (const span of scope.spans ?? []) {
              const start = BigInt(span.startTimeUnixNano)
              spans.push({
                service,
                traceId: span.traceId,
                spanId: span.spanId,
                parentSpanId: span.parentSpanId ?? '',
                name: span.name,
                kind: span.kind,
                startMs: Number(start / 1000n) / 1000,
                durationMs: Number(BigInt(span.endTimeUnixNano) - start) / 1e6,
                attributes: attributesOf(span.attributes),
                links: span.links ?? [],
              })
            }
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end('{}')
    })
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
  })
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, spans, exports: () => exports }
}
