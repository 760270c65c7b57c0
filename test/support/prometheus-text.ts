/**
 * Reading GET /metrics in tests: the samples of the Prometheus text format,
 * with their labels.
 */
export interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** Every sample of the exposition (comments and blank lines skipped). */
export function parseExposition (text: string): Sample[] {
  const found: Sample[] = []
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null) continue
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] as string] = l[2] as string
    found.push({ name: m[1] as string, labels, value: Number(m[3]) })
  }
  return found
}

/** The samples of one series name. */
export function samples (text: string, name: string): Array<{ labels: Record<string, string>, value: number }> {
  return parseExposition(text).filter((s) => s.name === name).map(({ labels, value }) => ({ labels, value }))
}

/** The value of the one sample of `name` whose labels include `labels`; undefined when none. */
export function sample (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const matching = samples(text, name).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  if (matching.length > 1) throw new Error(`${matching.length} samples of ${name} match ${JSON.stringify(labels)}`)
  return matching[0]?.value
}
