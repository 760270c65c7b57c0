/**
 * OpenTelemetry tracing, switched on and off by the standard OTEL_* variables
 * alone (API.md "Where it runs"): on when OTEL_EXPORTER_OTLP_ENDPOINT (or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set, unless OTEL_SDK_DISABLED=true or
 * OTEL_TRACES_EXPORTER=none. Everything else (protocol, headers, sampler,
 * OTEL_SERVICE_NAME, resource attributes) is read by the SDK itself.
 *
 * Off, nothing of the SDK is loaded: the modules below are required only
 * here, only when tracing is on, and the hot path asks `tracingOn()` (one
 * boolean) before touching a span (shared/telemetry/purchase-spans.ts).
 *
 * It must start before http, fastify and pg are loaded, so that their
 * instrumentations can hook them: api/start-tracing.ts and
 * worker/start-tracing.ts are the first imports of their entry points.
 * @see https://opentelemetry.io/docs/languages/js/getting-started/nodejs/
 */
import type { IncomingMessage } from 'node:http'
import type { NodeSDK } from '@opentelemetry/sdk-node'

let sdk: NodeSDK | undefined

function isSet (value: string | undefined): boolean {
  return value !== undefined && value.trim() !== ''
}

/** Whether these variables ask for traces to be exported. */
export function tracingWanted (env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false
  if (env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() === 'none') return false
  return isSet(env.OTEL_EXPORTER_OTLP_ENDPOINT) || isSet(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
}

/** True once tracing started in this process. */
export function tracingOn (): boolean {
  return sdk !== undefined
}

/** Probes and scrapes come every few seconds from every replica: traces of them would bury the purchases. */
const UNTRACED_PATHS = /^\/(health\/|metrics(\?|$)|admin\/|docs)/

function untraced (req: IncomingMessage): boolean {
  return UNTRACED_PATHS.test(req.url ?? '')
}

/**
 * Starts the SDK when the process's variables ask for it (the SDK reads the
 * rest of them from process.env itself); returns whether it runs.
 * `serviceName` is used when OTEL_SERVICE_NAME is not set.
 */
export function startTracing (serviceName: string): boolean {
  const env = process.env
  if (sdk !== undefined) return true
  if (!tracingWanted(env)) return false
  // Required here, not imported: loaded only when tracing is on, synchronously, before the modules they hook.
  const { NodeSDK } = require('@opentelemetry/sdk-node') as typeof import('@opentelemetry/sdk-node')
  const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http')
  const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg') as typeof import('@opentelemetry/instrumentation-pg')
  const { FastifyOtelInstrumentation } = require('@fastify/otel') as typeof import('@fastify/otel')
  sdk = new NodeSDK({
    serviceName: isSet(env.OTEL_SERVICE_NAME) ? env.OTEL_SERVICE_NAME : serviceName,
    instrumentations: [
      new HttpInstrumentation({ ignoreIncomingRequestHook: untraced }),
      // One span per request and its handler; a span per hook would triple each trace.
      new FastifyOtelInstrumentation({ registerOnInitialization: true, instrumentHooks: false, ignorePaths: (route) => UNTRACED_PATHS.test(route.url) }),
      // Only queries of a traced request or job: a pool's own upkeep and BullMQ's polling stay out.
      new PgInstrumentation({ requireParentSpan: true }),
    ],
  })
  sdk.start()
  return true
}

/**
 * Exports what is buffered and stops; for a graceful shutdown. Does nothing
 * when tracing is off. Never throws: a collector that is down must not turn
 * a clean stop into a failed one (its spans are lost either way).
 */
export async function stopTracing (): Promise<void> {
  const running = sdk
  sdk = undefined
  await running?.shutdown().catch(() => {})
}
