/**
 * Latency percentiles of a bench run. The load itself comes from the tests'
 * generator (test/support/load.ts), so tests and bench load the same way.
 */
export interface LatencySummary {
  p50: number
  p95: number
  p99: number
  max: number
}

export function summarize (latencies: Float64Array): LatencySummary {
  const sorted = Float64Array.from(latencies).sort()
  const at = (q: number): number => {
    if (sorted.length === 0) return 0
    const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))
    return round(sorted[idx] as number)
  }
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: at(1) }
}

export const round = (n: number, digits = 2): number => Math.round(n * 10 ** digits) / 10 ** digits
