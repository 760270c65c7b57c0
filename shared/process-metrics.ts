/**
 * prom-client's default process metrics (CPU, memory, handles, GC, event
 * loop lag) for GET /metrics of the API and the worker. The event loop
 * delay histogram behind `nodejs_eventloop_lag_p*` is sampled by a timer
 * every EVENT_LOOP_SAMPLE_MS: at prom-client's default, 10 ms, that timer
 * woke every process 100 times a second, traffic or not: an idle API spent
 * 8.8 ms of CPU a second, an idle worker 5.7 (1.7 and 1.5 at 100 ms). 100 ms
 * still gives a 15 s scrape 150 samples; a loop blocked for longer than that
 * is always seen.
 * @see https://nodejs.org/api/perf_hooks.html#perf_hooksmonitoreventloopdelayoptions
 */
import { collectDefaultMetrics, type Registry } from 'prom-client'

/** How often the event loop's delay is sampled (ms). */
export const EVENT_LOOP_SAMPLE_MS = 100

export function collectProcessMetrics (registry: Registry): void {
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS })
}
