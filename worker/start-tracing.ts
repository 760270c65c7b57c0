/**
 * The first import of worker/main.ts: starts OpenTelemetry when the OTEL_*
 * variables ask for it (shared/telemetry/tracing.ts), before pg and BullMQ
 * are loaded, so that their instrumentations can hook them.
 */
import { startTracing } from '../shared/telemetry/tracing'

startTracing('ticket-allocation-worker')
