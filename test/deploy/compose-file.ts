/**
 * Reading docker-compose.yml and the Dockerfile the way Docker would, for
 * test/deploy: YAML with merge keys, `${VAR:-default}` interpolation, and the
 * instructions of the Dockerfile's stages.
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'
import YAML from 'yaml'
import { ROOT } from '../support/processes'

export const COMPOSE_FILE = path.join(ROOT, 'docker-compose.yml')
/** The override that runs the stack without Redis (queues on PostgreSQL). */
export const NO_REDIS_FILE = path.join(ROOT, 'docker-compose.no-redis.yml')
/** The override that runs the stack on a small Redis Cluster. */
export const REDIS_CLUSTER_FILE = path.join(ROOT, 'docker-compose.redis-cluster.yml')
export const DOCKERFILE = path.join(ROOT, 'Dockerfile')

export interface ComposeService {
  image?: string
  build?: unknown
  command?: string[] | string
  environment?: Record<string, string | number | boolean | null>
  depends_on?: Record<string, { condition: string, required?: boolean }>
  profiles?: string[]
  healthcheck?: { test: string[] | string, interval?: string, timeout?: string }
  ports?: string[]
  volumes?: string[]
  deploy?: { replicas?: number | string }
  stop_grace_period?: string
  restart?: string
}

export interface ComposeFile {
  services: Record<string, ComposeService>
  volumes?: Record<string, unknown>
  [key: string]: unknown
}

/** The file as YAML with merge keys resolved, before interpolation (what the schema sees first). */
export function readComposeRaw (file = COMPOSE_FILE): ComposeFile {
  return YAML.parse(readFileSync(file, 'utf8'), { merge: true }) as ComposeFile
}

/**
 * Files merged as `docker compose -f a -f b` merges them: mappings key by
 * key, anything else (scalars, sequences such as `profiles`) replaced.
 */
export function mergeCompose (base: unknown, override: unknown): unknown {
  if (base === null || typeof base !== 'object' || Array.isArray(base) || override === null || typeof override !== 'object' || Array.isArray(override)) return override
  const merged: Record<string, unknown> = { ...(base as Record<string, unknown>) }
  for (const [key, value] of Object.entries(override)) merged[key] = key in merged ? mergeCompose(merged[key], value) : value
  return merged
}

/** Compose interpolation: `$$`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, from `vars` only. */
export function interpolate (text: string, vars: Record<string, string>): string {
  return text.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}/g, (match, name: string | undefined, op: string | undefined, def: string | undefined) => {
    if (match === '$$') return '$'
    const value = vars[name as string]
    if (op === ':-') return value === undefined || value === '' ? def ?? '' : value
    if (op === '-') return value === undefined ? def ?? '' : value
    return value ?? ''
  })
}

/** Every string of a parsed file interpolated, as `docker compose config` does. */
export function interpolateDeep (value: unknown, vars: Record<string, string>): unknown {
  if (typeof value === 'string') return interpolate(value, vars)
  if (Array.isArray(value)) return value.map((item) => interpolateDeep(item, vars))
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolateDeep(v, vars)]))
  }
  return value
}

/** The file as `docker compose config` would see it with `vars` as the shell environment. */
export function readCompose (vars: Record<string, string> = {}): ComposeFile {
  return interpolateDeep(readComposeRaw(), vars) as ComposeFile
}

/** A service's environment as strings, the way the container sees it. */
export function serviceEnvironment (compose: ComposeFile, service: string): Record<string, string> {
  const env = compose.services[service]?.environment ?? {}
  return Object.fromEntries(Object.entries(env).map(([k, v]) => [k, v === null ? '' : String(v)]))
}

/** Compose durations such as `15s`, `1m30s`, `500ms`, in ms. */
export function durationMs (text: string): number {
  let total = 0
  const units: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001 }
  const parts = text.matchAll(/(\d+(?:\.\d+)?)(ms|us|h|m|s)/g)
  let consumed = ''
  for (const [whole, amount, unit] of parts) {
    total += Number(amount) * (units[unit as string] ?? NaN)
    consumed += whole
  }
  if (consumed !== text) throw new Error(`not a compose duration: ${text}`)
  return total
}

export interface DockerStage {
  name: string
  base: string
  /** instructions after FROM, continuation lines joined */
  instructions: Array<{ op: string, args: string }>
}

export function readDockerfile (): DockerStage[] {
  const lines = readFileSync(DOCKERFILE, 'utf8').replace(/\\\n/g, ' ').split('\n')
  const stages: DockerStage[] = []
  for (const raw of lines) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const [, op = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? []
    if (op.toUpperCase() === 'FROM') {
      const [, base = '', name = ''] = /^(\S+)(?:\s+AS\s+(\S+))?/i.exec(args) ?? []
      stages.push({ name: name || String(stages.length), base, instructions: [] })
    } else {
      stages.at(-1)?.instructions.push({ op: op.toUpperCase(), args })
    }
  }
  return stages
}

/** The exec-form arguments of CMD/ENTRYPOINT, or the shell form split on spaces. */
export function commandWords (args: string | string[]): string[] {
  if (Array.isArray(args)) return args
  const text = args.trim()
  if (text.startsWith('[')) return JSON.parse(text) as string[]
  return text.split(/\s+/)
}
