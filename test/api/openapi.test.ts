import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { buildTestApp } from '../support/app'
import { createTestEnvironment } from '../support/environment'

type Json = Record<string, any>

/** Every route of API.md with every status it lists (keep in sync with API.md). */
const ROUTES: Array<{ method: string, path: string, statuses: number[] }> = [
  { method: 'post', path: '/ticket_options', statuses: [201, 400, 413, 415, 503] },
  { method: 'get', path: '/ticket_options/{id}', statuses: [200, 400, 404, 503] },
  { method: 'post', path: '/ticket_options/{id}/purchases', statuses: [201, 202, 400, 404, 409, 413, 415, 422, 429, 503] },
  { method: 'get', path: '/ticket_options/{id}/purchases/{purchase_id}', statuses: [200, 400, 404, 503] },
  { method: 'post', path: '/ticket_options/{id}/purchases/{purchase_id}/cancel', statuses: [200, 202, 400, 404, 409, 413, 415, 503] },
  { method: 'post', path: '/ticket_options/{id}/reservations', statuses: [201, 202, 400, 404, 409, 413, 415, 422, 429, 503] },
  { method: 'get', path: '/ticket_options/{id}/reservations/{reservation_id}', statuses: [200, 400, 404, 503] },
  { method: 'post', path: '/ticket_options/{id}/reservations/{reservation_id}/confirm', statuses: [200, 201, 202, 400, 404, 409, 413, 415, 503] },
  { method: 'post', path: '/ticket_options/{id}/reservations/{reservation_id}/release', statuses: [200, 202, 400, 404, 409, 413, 415, 503] },
  { method: 'get', path: '/ticket_options/{id}/ledger', statuses: [200, 400, 404, 503] },
  { method: 'get', path: '/ticket_options/{id}/queue', statuses: [200, 400, 404, 503] },
  { method: 'get', path: '/ticket_options/{id}/purchases/{purchase_id}/events', statuses: [200, 400, 404, 503] },
  { method: 'get', path: '/ticket_options/{id}/reservations/{reservation_id}/events', statuses: [200, 400, 404, 503] },
  { method: 'get', path: '/health/live', statuses: [200] },
  { method: 'get', path: '/health/ready', statuses: [200, 503] },
  { method: 'get', path: '/metrics', statuses: [200] },
]

/** Headers that come with an answer: [method, path, status, header]. */
const HEADERS: Array<[string, string, number, string]> = [
  ['post', '/ticket_options', 201, 'location'],
  ['post', '/ticket_options/{id}/purchases', 201, 'location'],
  ['post', '/ticket_options/{id}/purchases', 202, 'location'],
  ['post', '/ticket_options/{id}/purchases', 429, 'retry-after'],
  ['post', '/ticket_options/{id}/purchases', 503, 'retry-after'],
  ['post', '/ticket_options', 503, 'retry-after'],
  ['get', '/health/ready', 503, 'retry-after'],
]

function refs (node: unknown, found: string[] = []): string[] {
  if (Array.isArray(node)) for (const item of node) refs(item, found)
  else if (node !== null && typeof node === 'object') {
    for (const [key, value] of Object.entries(node)) {
      if (key === '$ref' && typeof value === 'string') found.push(value)
      else refs(value, found)
    }
  }
  return found
}

t.test('OpenAPI document and Swagger UI', async (t) => {
  // Dashboard on, to show that its routes stay out of the document.
  const environment = await createTestEnvironment(t, { DASHBOARD_USER: 'operator', DASHBOARD_PASSWORD: 'a-long-enough-password' })
  const app = await buildTestApp(t, environment.config)

  const res = await app.inject({ method: 'GET', url: '/docs/json' })
  t.equal(res.statusCode, 200)
  const doc = res.json() as Json

  t.test('is a valid OpenAPI 3 document', async (t) => {
    // An ES module: with module node16 a static import would compile to require().
    const { Validator } = await import('@seriousme/openapi-schema-validator')
    const result = await new Validator().validate(doc)
    t.ok(result.valid, JSON.stringify(result.errors, null, 1))
    // The validator does reject a broken document (so the check above can fail).
    const broken = structuredClone(doc)
    delete broken.paths['/ticket_options'].post.responses['201'].description
    t.notOk((await new Validator().validate(broken)).valid, 'a response without a description is refused')
    t.match(doc.openapi, /^3\./)
    const pkg = JSON.parse(readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as { version: string }
    t.equal(doc.info.version, pkg.version, 'info.version follows package.json')
    t.ok(doc.info.title.length > 0 && doc.info.description.length > 0, 'title and description')
  })

  t.test('every reference resolves to a named component', async (t) => {
    const all = refs(doc.paths)
    t.ok(all.includes('#/components/schemas/Error'), 'errors refer to the Error component')
    for (const ref of new Set([...all, ...refs(doc.components)])) {
      const name = /^#\/components\/schemas\/([^/]+)$/.exec(ref)?.[1]
      t.ok(name !== undefined && doc.components.schemas[name] !== undefined, `${ref} resolves`)
    }
  })

  t.test('documents every public route and status of API.md', async (t) => {
    for (const route of ROUTES) {
      const operation = doc.paths[route.path]?.[route.method] as Json | undefined
      if (operation === undefined) { t.fail(`${route.method} ${route.path} is missing`); continue }
      t.ok(operation.tags?.length > 0, `${route.method} ${route.path} has tags`)
      t.ok(typeof operation.summary === 'string' && operation.summary.length > 0, `${route.method} ${route.path} has a summary`)
      t.same(Object.keys(operation.responses).map(Number).sort(), [...route.statuses].sort(), `${route.method} ${route.path} statuses`)
      for (const [status, response] of Object.entries(operation.responses as Record<string, Json>)) {
        t.not(response.description, 'Default Response', `${route.method} ${route.path} ${status} is described`)
        if (Number(status) < 400) continue
        let schema = response.content?.['application/json']?.schema as Json
        if (typeof schema?.$ref === 'string') schema = doc.components.schemas[String(schema.$ref.split('/').pop())]
        t.ok(['statusCode', 'error', 'message', 'code'].every((field) => schema?.required?.includes(field)),
          `${route.method} ${route.path} ${status} has the error body`)
      }
    }
    t.ok(doc.paths['/metrics'].get.responses['200'].content['text/plain; version=0.0.4; charset=utf-8'], '/metrics is text')
  })

  t.test('documents Location, Retry-After and Idempotency-Key', async (t) => {
    for (const [method, route, status, header] of HEADERS) {
      t.ok(doc.paths[route][method].responses[status].headers?.[header], `${method} ${route} ${status} has ${header}`)
    }
    const parameters = doc.paths['/ticket_options/{id}/purchases'].post.parameters as Json[]
    const key = parameters.find((p) => p.in === 'header' && p.name.toLowerCase() === 'idempotency-key')
    t.match(key, { required: false, schema: { type: 'string', minLength: 1, maxLength: 255 } })
  })

  t.test('leaves out the dashboard and the UI\'s own routes', async (t) => {
    t.same(Object.keys(doc.paths).filter((p) => p.startsWith('/admin') || p.startsWith('/docs')), [])
    const dashboard = await app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: { authorization: `Basic ${Buffer.from('operator:a-long-enough-password').toString('base64')}` } })
    t.equal(dashboard.statusCode, 200, 'while the dashboard itself is open')
  })

  t.test('/docs serves Swagger UI', async (t) => {
    const ui = await app.inject({ method: 'GET', url: '/docs' })
    const page = ui.statusCode === 302 ? await app.inject({ method: 'GET', url: String(ui.headers.location).replace(/^\.\//, '/docs/') }) : ui
    t.equal(page.statusCode, 200)
    t.match(page.headers['content-type'], /^text\/html/)
    t.match(page.body, /swagger-ui/i)
  })
})
