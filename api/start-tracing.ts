/**
 * The first import of api/server.ts: starts OpenTelemetry when the OTEL_*
 * variables ask for it (shared/telemetry/tracing.ts), before http, fastify
 * and pg are loaded, so that their instrumentations can hook them.
 */
import { startTracing } from '../shared/telemetry/tracing'

startTracing('ticket-allocation-api')
