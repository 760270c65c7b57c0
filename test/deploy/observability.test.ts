/**
 * The compose profile `observability` without Docker (none runs here):
 * - the profile's services, their mounts and their wiring to the app's
 *   services, on the interpolated docker-compose.yml (the file as a whole is
 *   validated against the Compose Specification in compose.test.ts);
 * - observability/prometheus.yml, with promtool (Debian's `prometheus`
 *   package; .ci/run installs it) and against compose's ports and names;
 * - the Grafana dashboard: every panel's query is valid PromQL (promtool
 *   parses it as a rule) and names series and labels that an API and a
 *   worker really export after a burst, with those label values.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import YAML from 'yaml'
import { tracingWanted } from '../../shared/telemetry/tracing'
import { buy, createOption, setUp } from '../support/app'
import { QUEUED } from '../support/environment'
import { ROOT } from '../support/processes'
import { parseExposition, type Sample } from '../support/prometheus-text'
import { readCompose, serviceEnvironment } from './compose-file'

const PROFILE = 'observability'
const PROMETHEUS_CONFIG = path.join(ROOT, 'observability', 'prometheus.yml')
const DASHBOARD = path.join(ROOT, 'observability', 'grafana', 'dashboards', 'ticket-sale.json')
const DATASOURCES = path.join(ROOT, 'observability', 'grafana', 'provisioning', 'datasources', 'datasources.yml')

const promtool = spawnSync('promtool', ['--version']).status === 0 ? 'promtool' : null
/** CI installs promtool; elsewhere its checks are skipped, with a note. */
const promtoolSkip = promtool === null && process.env.CI !== 'true' ? 'promtool is not installed (apt-get install prometheus)' : false

interface Panel {
  title: string
  datasource?: { uid: string }
  targets?: Array<{ expr: string, datasource?: { uid: string } }>
}

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { uid: string, panels: Panel[] }
const queries = dashboard.panels.flatMap((p) => (p.targets ?? []).map((target) => ({ panel: p.title, expr: target.expr })))

/** Host path of a `./host:/container[:ro]` mount, from the repository's root. */
function hostPath (mount: string): string | null {
  const [host] = mount.split(':')
  return host?.startsWith('./') === true ? path.join(ROOT, host) : null
}

t.test('the observability profile: Prometheus, Grafana and Jaeger, wired to the app', async (t) => {
  const compose = readCompose({})
  const { prometheus, grafana, jaeger } = compose.services
  for (const [name, service] of Object.entries(compose.services)) {
    const inProfile = ['prometheus', 'grafana', 'jaeger'].includes(name)
    t.same(service.profiles ?? [], inProfile ? [PROFILE] : [], `${name}: ${inProfile ? 'only with --profile observability' : 'always runs'}`)
  }
  for (const [name, service] of [['prometheus', prometheus], ['grafana', grafana]] as const) {
    for (const mount of service?.volumes ?? []) {
      const host = hostPath(mount)
      if (host !== null) t.ok(existsSync(host), `${name}: mounts ${path.relative(ROOT, host)}, which exists`)
    }
  }
  const grafanaEnv = serviceEnvironment(compose, 'grafana')
  const home = String(grafanaEnv.GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH)
  const dashboardsMount = grafana?.volumes?.find((v) => v.endsWith(':/var/lib/grafana/dashboards:ro')) ?? ''
  t.equal(path.join(hostPath(dashboardsMount) ?? '', path.basename(home)), DASHBOARD, 'the home dashboard is the one in the repository')
  t.ok(grafana?.ports?.some((p) => p.endsWith(':3000')) && prometheus?.ports?.some((p) => p.endsWith(':9090')) && jaeger?.ports?.some((p) => p.endsWith(':16686')), 'Grafana, Prometheus and Jaeger UIs are published')
  t.notOk(grafana?.ports?.includes('3000:3000'), 'Grafana does not take the API\'s port')

  // Traces: off unless asked for, and then to the profile's Jaeger, one service name per process kind.
  const api = serviceEnvironment(compose, 'api')
  const worker = serviceEnvironment(compose, 'worker')
  t.equal(tracingWanted(api as NodeJS.ProcessEnv), false, 'compose alone exports no traces')
  const traced = readCompose({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' })
  t.equal(tracingWanted(serviceEnvironment(traced, 'api') as NodeJS.ProcessEnv), true, 'OTEL_EXPORTER_OTLP_ENDPOINT switches tracing on')
  t.equal(tracingWanted(serviceEnvironment(traced, 'worker') as NodeJS.ProcessEnv), true)
  t.equal(api.OTEL_SERVICE_NAME, 'ticket-api')
  t.equal(worker.OTEL_SERVICE_NAME, 'ticket-worker')

  // Grafana's data sources are the profile's services.
  const { datasources } = YAML.parse(readFileSync(DATASOURCES, 'utf8')) as { datasources: Array<{ uid: string, url: string }> }
  for (const source of datasources) {
    const host = new URL(source.url).hostname
    t.ok(host in compose.services, `data source ${source.uid} points at the ${host} service`)
  }
  const uids = new Set(datasources.map((d) => d.uid))
  for (const panel of dashboard.panels) {
    for (const uid of [panel.datasource?.uid, ...(panel.targets ?? []).map((q) => q.datasource?.uid)]) {
      if (uid !== undefined && !uids.has(uid)) t.fail(`panel "${panel.title}" uses data source ${uid}, which is not provisioned`)
    }
  }
})

t.test('prometheus.yml scrapes every api and worker replica on the ports compose gives them', async (t) => {
  const compose = readCompose({})
  const config = YAML.parse(readFileSync(PROMETHEUS_CONFIG, 'utf8')) as { scrape_configs: Array<{ job_name: string, dns_sd_configs?: Array<{ names: string[], port: number, type: string }> }> }
  const ports = { api: Number(serviceEnvironment(compose, 'api').PORT), worker: Number(serviceEnvironment(compose, 'worker').WORKER_HEALTH_PORT) }
  for (const [service, port] of Object.entries(ports)) {
    const job = config.scrape_configs.find((c) => c.job_name === service)
    const sd = job?.dns_sd_configs?.[0]
    t.same(sd?.names, [service], `${service}: found by compose DNS, every replica`)
    t.equal(sd?.type, 'A')
    t.equal(sd?.port, port, `${service}: port ${port}`)
  }
  t.test('promtool check config', { skip: promtoolSkip }, async (t) => {
    const checked = spawnSync(promtool ?? 'promtool', ['check', 'config', PROMETHEUS_CONFIG], { encoding: 'utf8' })
    t.equal(checked.status, 0, `${checked.stdout}${checked.stderr}`)
  })
})

t.test('every dashboard query is valid PromQL', { skip: promtoolSkip }, async (t) => {
  t.ok(queries.length >= 15, `${queries.length} queries`)
  const dir = mkdtempSync(path.join(tmpdir(), 'dashboard-rules-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const rules = (exprs: string[]): string => YAML.stringify({ groups: [{ name: 'dashboard', rules: exprs.map((expr, i) => ({ record: `dashboard:query_${i}`, expr })) }] })
  writeFileSync(path.join(dir, 'rules.yml'), rules(queries.map((q) => q.expr)))
  const checked = spawnSync(promtool ?? 'promtool', ['check', 'rules', path.join(dir, 'rules.yml')], { encoding: 'utf8' })
  t.equal(checked.status, 0, `${checked.stdout}${checked.stderr}`)
  // The check can fail: a broken query is refused.
  writeFileSync(path.join(dir, 'broken.yml'), rules(['sum by (le (rate(purchases_total[1m]))']))
  t.not(spawnSync(promtool ?? 'promtool', ['check', 'rules', path.join(dir, 'broken.yml')]).status, 0, 'a broken query is refused')
})

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan'])

/** The series selectors of a PromQL expression: metric names with their label matchers. */
export function selectorsOf (expr: string): Array<{ name: string, matchers: Array<{ label: string, op: string, value: string }> }> {
  const text = expr
    .replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, ' ') // label lists, not series
    .replace(/\[[^\]]*\]/g, ' ') // range durations
  const found = []
  for (const m of text.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{([^}]*)\})?(\s*\()?/g)) {
    const [, name = '', , body, call] = m
    if (call !== undefined || KEYWORDS.has(name.toLowerCase())) continue // a function, or a keyword
    const matchers = [...(body ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)]
      .map(([, label = '', op = '', value = '']) => ({ label, op, value }))
    found.push({ name, matchers })
  }
  return found
}

t.test('the selector reader finds series, not functions, keywords or labels', async (t) => {
  t.same(selectorsOf('histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{route="/a/:id",method="POST"}[1m])))'),
    [{ name: 'http_request_duration_seconds_bucket', matchers: [{ label: 'route', op: '=', value: '/a/:id' }, { label: 'method', op: '=', value: 'POST' }] }])
  t.same(selectorsOf('max by (x) (a{state="available"}) / (max by (x) (deriv(b[5m])) > 0)').map((s) => s.name), ['a', 'b'])
})

t.test('every dashboard query names series the API and the worker export, with those labels', async (t) => {
  const { app, worker } = await setUp(t, { env: QUEUED })
  const optionId = await createOption(app, 5)
  for (let i = 0; i < 7; i++) await buy(app, optionId)
  const apiText = (await app.inject({ method: 'GET', url: '/metrics' })).body
  const workerText = await (await fetch(`http://127.0.0.1:${worker?.healthPort ?? 0}/metrics`)).text()
  const exported: Sample[] = [...parseExposition(apiText), ...parseExposition(workerText)]
  const names = new Set(exported.map((s) => s.name))
  t.ok(names.has('ticket_option_tickets') && names.has('worker_purchase_batch_size_bucket'), 'both processes were scraped')

  let checked = 0
  for (const { panel, expr } of queries) {
    const selectors = selectorsOf(expr)
    if (selectors.length === 0) t.fail(`panel "${panel}": no series in ${expr}`)
    for (const { name, matchers } of selectors) {
      checked++
      const series = exported.filter((s) => s.name === name)
      if (series.length === 0) {
        t.fail(`panel "${panel}": ${name} is not exported`)
        continue
      }
      for (const { label, op, value } of matchers) {
        const match = (v: string | undefined): boolean => {
          if (op === '=') return v === value
          if (op === '!=') return v !== value
          const re = new RegExp(`^(?:${value})$`)
          return op === '=~' ? re.test(v ?? '') : !re.test(v ?? '')
        }
        if (!series.some((s) => match(s.labels[label]))) t.fail(`panel "${panel}": no sample of ${name} has ${label}${op}"${value}"`)
      }
    }
  }
  t.ok(checked >= queries.length, `${checked} series selectors checked against the scrape`)
  t.equal(exported.find((s) => s.name === 'ticket_option_tickets' && s.labels.state === 'sold' && s.labels.ticket_option_id === optionId)?.value, 5, 'the stock the sell-out estimate reads')
})
