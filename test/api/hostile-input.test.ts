/**
 * Hostile input (API.md "Errors"): every bad request gets its exact 4xx and the
 * JSON error body `{statusCode, error, message, code}` without internals, the
 * service keeps selling correctly afterwards, and ids a client invents never
 * create a Redis key.
 */
import { randomUUID } from 'node:crypto'
import { STATUS_CODES } from 'node:http'
import net from 'node:net'
import t, { type Test } from 'tap'
import type { InjectOptions } from 'fastify'
import type { Redis } from 'ioredis'
import { createOption, setUp } from '../support/app'
import { unbalancedOptions } from '../support/environment'

const USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'
const UNKNOWN = '00000000-0000-4000-8000-000000000000'
const UUID_ANYWHERE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g
const JSON_TYPE = { 'content-type': 'application/json' }
/** What must never appear in an answer: stack frames, file paths, SQL or driver words. */
const INTERNALS = /node_modules|\/work\/|\.ts:\d|\n\s+at |stack|syntax error|relation "|column "|duplicate key|violates|pg_|ioredis|bullmq/i

type Case = [label: string, request: InjectOptions, status: number, code: string | RegExp]

function cases (option: string): Case[] {
  const purchases = `/ticket_options/${option}/purchases`
  const raw = (url: string, payload: string, headers: Record<string, string> = JSON_TYPE): InjectOptions => ({ method: 'POST', url, payload, headers })
  const buy = (payload: unknown, headers: Record<string, string> = {}): InjectOptions => ({ method: 'POST', url: purchases, payload: JSON.stringify(payload), headers: { ...JSON_TYPE, ...headers } })
  const create = (payload: unknown): InjectOptions => ({ method: 'POST', url: '/ticket_options', payload: JSON.stringify(payload), headers: JSON_TYPE })
  const valid = { quantity: 1, user_id: USER }
  return [
    // Malformed and truncated JSON
    ['truncated JSON', raw('/ticket_options', '{"name": "a", "allocation": '), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['JSON without its closing brace', raw(purchases, `{"quantity": 1, "user_id": "${USER}"`), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['JSON with trailing garbage', raw(purchases, `{"quantity": 1, "user_id": "${USER}"} x`), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['single-quoted JSON', raw('/ticket_options', "{'name': 'a', 'allocation': 1}"), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['NaN is not JSON', raw(purchases, `{"quantity": NaN, "user_id": "${USER}"}`), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['an empty JSON body', raw(purchases, ''), 400, 'FST_ERR_CTP_EMPTY_JSON_BODY'],
    ['prototype poisoning with __proto__', raw('/ticket_options', '{"name": "a", "allocation": 1, "__proto__": {"admin": true}}'), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    ['prototype poisoning with constructor.prototype', raw('/ticket_options', '{"name": "a", "allocation": 1, "constructor": {"prototype": {"admin": true}}}'), 400, 'FST_ERR_CTP_INVALID_JSON_BODY'],
    // Bodies that are JSON but not an object
    ['a null body', raw(purchases, 'null'), 400, 'FST_ERR_VALIDATION'],
    ['an array body', raw(purchases, JSON.stringify([valid])), 400, 'FST_ERR_VALIDATION'],
    ['a string body', raw('/ticket_options', '"tickets"'), 400, 'FST_ERR_VALIDATION'],
    ['no body at all', { method: 'POST', url: purchases }, 400, 'FST_ERR_VALIDATION'],
    // Wrong content types
    ['text/plain', raw(purchases, JSON.stringify(valid), { 'content-type': 'text/plain' }), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    ['a form', raw('/ticket_options', 'name=a&allocation=1', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    ['multipart', raw('/ticket_options', '--x\r\n\r\n--x--', { 'content-type': 'multipart/form-data; boundary=x' }), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    ['XML', raw(purchases, '<purchase quantity="1"/>', { 'content-type': 'application/xml' }), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    ['a JSON-ish vendor type', raw(purchases, JSON.stringify(valid), { 'content-type': 'application/vnd.api+json' }), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    ['a body without a content type', raw(purchases, JSON.stringify(valid), {}), 415, 'FST_ERR_CTP_INVALID_MEDIA_TYPE'],
    // Huge and deep bodies
    ['a body over the limit', create({ name: 'a', desc: 'x'.repeat(20_000), allocation: 1 }), 413, 'FST_ERR_CTP_BODY_TOO_LARGE'],
    ['a purchase body over the limit', buy({ ...valid, padding: 'x'.repeat(17_000) }), 413, 'FST_ERR_CTP_BODY_TOO_LARGE'],
    ['arrays nested 5,000 deep', raw('/ticket_options', `{"name": ${'['.repeat(5000)}${']'.repeat(5000)}, "allocation": 1}`), 400, 'FST_ERR_VALIDATION'],
    ['objects nested 1,000 deep', raw(purchases, `{"quantity": ${'{"a":'.repeat(1000)}1${'}'.repeat(1000)}, "user_id": "${USER}"}`), 400, 'FST_ERR_VALIDATION'],
    // Numbers
    ['quantity 0', buy({ ...valid, quantity: 0 }), 400, 'FST_ERR_VALIDATION'],
    ['quantity negative zero', raw(purchases, `{"quantity": -0, "user_id": "${USER}"}`), 400, 'FST_ERR_VALIDATION'],
    ['quantity -1', buy({ ...valid, quantity: -1 }), 400, 'FST_ERR_VALIDATION'],
    ['quantity 2^31', buy({ ...valid, quantity: 2 ** 31 }), 400, 'FST_ERR_VALIDATION'],
    ['quantity 2^53 + 1 (not representable)', raw(purchases, `{"quantity": 9007199254740993, "user_id": "${USER}"}`), 400, 'FST_ERR_VALIDATION'],
    ['quantity 1e400 (infinite)', raw(purchases, `{"quantity": 1e400, "user_id": "${USER}"}`), 400, 'FST_ERR_VALIDATION'],
    ['quantity 1.5', buy({ ...valid, quantity: 1.5 }), 400, 'FST_ERR_VALIDATION'],
    ['quantity 1.0000000001', raw(purchases, `{"quantity": 1.0000000001, "user_id": "${USER}"}`), 400, 'FST_ERR_VALIDATION'],
    ['quantity as a string', buy({ ...valid, quantity: '1' }), 400, 'FST_ERR_VALIDATION'],
    ['quantity null', buy({ ...valid, quantity: null }), 400, 'FST_ERR_VALIDATION'],
    ['quantity as an array', buy({ ...valid, quantity: [1] }), 400, 'FST_ERR_VALIDATION'],
    ['quantity as an object', buy({ ...valid, quantity: { value: 1 } }), 400, 'FST_ERR_VALIDATION'],
    ['quantity true', buy({ ...valid, quantity: true }), 400, 'FST_ERR_VALIDATION'],
    ['allocation 2^53', create({ name: 'a', allocation: 2 ** 53 }), 400, 'FST_ERR_VALIDATION'],
    ['allocation as a string', create({ name: 'a', allocation: '100' }), 400, 'FST_ERR_VALIDATION'],
    ['allocation -1', create({ name: 'a', allocation: -1 }), 400, 'FST_ERR_VALIDATION'],
    // Strings, unicode and control characters
    ['user_id not a UUID', buy({ ...valid, user_id: 'someone' }), 400, 'FST_ERR_VALIDATION'],
    ['user_id with SQL', buy({ ...valid, user_id: "'; drop table purchases; --" }), 400, 'FST_ERR_VALIDATION'],
    ['user_id in braces', buy({ ...valid, user_id: `{${USER}}` }), 400, 'FST_ERR_VALIDATION'],
    ['user_id null', buy({ ...valid, user_id: null }), 400, 'FST_ERR_VALIDATION'],
    ['an unknown field', buy({ ...valid, price: 0 }), 400, 'FST_ERR_VALIDATION'],
    ['name with a NUL', create({ name: 'a\u0000b', allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['name with an escape sequence', create({ name: '\u001b[31mred', allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['name with a DEL', create({ name: 'a\u007f', allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['name of unicode spaces only', create({ name: '\u2003\u00a0\u3000', allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['name of 201 emoji', create({ name: '🎟'.repeat(201), allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['name as an object', create({ name: { first: 'a' }, allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    ['desc with a bell', create({ name: 'a', desc: 'ding\u0007', allocation: 1 }), 400, 'FST_ERR_VALIDATION'],
    // Path ids
    ['an option id that is not a UUID', { method: 'GET', url: '/ticket_options/42' }, 400, 'FST_ERR_VALIDATION'],
    ['an SQL-looking option id', { method: 'GET', url: `/ticket_options/${encodeURIComponent("1' or '1'='1")}` }, 400, 'FST_ERR_VALIDATION'],
    ['an option id with a NUL', { method: 'GET', url: '/ticket_options/%00' }, 400, 'FST_ERR_VALIDATION'],
    ['a path traversal id', { method: 'GET', url: '/ticket_options/..%2F..%2Fetc%2Fpasswd' }, 400, 'FST_ERR_VALIDATION'],
    ['a UUID with a trailing space', { method: 'POST', url: `/ticket_options/${option}%20/purchases`, payload: valid }, 400, 'FST_ERR_VALIDATION'],
    ['an SQL-looking purchase id', { method: 'GET', url: `${purchases}/${encodeURIComponent('x; select pg_sleep(10)')}` }, 400, 'FST_ERR_VALIDATION'],
    ['broken percent-encoding', { method: 'GET', url: '/ticket_options/%E0%A4%A' }, 400, 'FST_ERR_BAD_URL'],
    ['a 500-character id', { method: 'GET', url: `/ticket_options/${'a'.repeat(500)}` }, 414, 'FST_ERR_MAX_PARAM_LENGTH'],
    // Unknown routes and methods
    ['an unknown route', { method: 'GET', url: '/admin' }, 404, 'ROUTE_NOT_FOUND'],
    ['listing options (no such route)', { method: 'GET', url: '/ticket_options' }, 404, 'ROUTE_NOT_FOUND'],
    ['DELETE an option', { method: 'DELETE', url: `/ticket_options/${option}` }, 404, 'ROUTE_NOT_FOUND'],
    ['PUT an option', { method: 'PUT', url: `/ticket_options/${option}`, payload: { name: 'a', allocation: 1 } }, 404, 'ROUTE_NOT_FOUND'],
    ['PATCH a purchase', { method: 'PATCH', url: `${purchases}/${UNKNOWN}`, payload: {} }, 404, 'ROUTE_NOT_FOUND'],
    ['POST to a purchase', { method: 'POST', url: `${purchases}/${UNKNOWN}`, payload: valid }, 404, 'ROUTE_NOT_FOUND'],
    // A WebDAV method Fastify knows but we route nothing to (light-my-request's types only list the common ones).
    ['PROPFIND', { method: 'PROPFIND' as 'GET', url: '/ticket_options' }, 404, 'ROUTE_NOT_FOUND'],
    ['buying from an unknown option', { method: 'POST', url: `/ticket_options/${UNKNOWN}/purchases`, payload: valid }, 404, 'TICKET_OPTION_NOT_FOUND'],
    // Idempotency-Key
    ['an empty Idempotency-Key', buy(valid, { 'idempotency-key': '' }), 400, 'FST_ERR_VALIDATION'],
    ['an Idempotency-Key of 256 characters', buy(valid, { 'idempotency-key': 'k'.repeat(256) }), 400, 'FST_ERR_VALIDATION'],
    ['an Idempotency-Key with a tab', buy(valid, { 'idempotency-key': 'a\tb' }), 400, 'FST_ERR_VALIDATION'],
    ['an Idempotency-Key with a control character', buy(valid, { 'idempotency-key': 'a\u0001b' }), 400, 'FST_ERR_VALIDATION'],
    ['an Idempotency-Key that is not ASCII', buy(valid, { 'idempotency-key': 'café' }), 400, 'FST_ERR_VALIDATION'],
  ]
}

function checkErrorBody (t: Test, status: number, contentType: unknown, text: string, code: string | RegExp): void {
  t.match(String(contentType), /^application\/json/, 'JSON content type')
  let body: Record<string, unknown> = {}
  try {
    body = JSON.parse(text) as Record<string, unknown>
  } catch {
    t.fail(`not JSON: ${text.slice(0, 200)}`)
  }
  t.same(Object.keys(body).sort(), ['code', 'error', 'message', 'statusCode'], 'the error body, nothing more')
  t.equal(body.statusCode, status)
  t.equal(body.error, STATUS_CODES[status])
  t.match(body.code, code)
  t.notMatch(text, INTERNALS, 'no internals')
}

t.test('hostile input', async (t) => {
  const { app, sql } = await setUp(t)
  const option = await createOption(app, 10)
  const table = cases(option)
  t.ok(table.length >= 40, `${table.length} cases`)

  for (const [label, request, status, code] of table) {
    t.test(label, async (t) => {
      const res = await app.inject(request)
      t.equal(res.statusCode, status)
      checkErrorBody(t, status, res.headers['content-type'], res.body, code)
      if (status === 400 && code === 'FST_ERR_VALIDATION') t.match(res.json().message, /^(body|params|headers|querystring)/, 'names the field')
    })
  }

  t.test('requests Node refuses before Fastify sees them get the same JSON body', async (t) => {
    const address = await app.listen({ port: 0, host: '127.0.0.1' })
    const { port } = new URL(address)
    const rawCases: Array<[string, string, number, string]> = [
      ['an unknown HTTP method', 'FROB /ticket_options HTTP/1.1\r\nHost: x\r\n\r\n', 400, 'BAD_HTTP_REQUEST'],
      ['not HTTP at all', 'hello there\r\n\r\n', 400, 'BAD_HTTP_REQUEST'],
      ['headers over 16 KiB', `GET /ticket_options/${option} HTTP/1.1\r\nHost: x\r\nX-Big: ${'x'.repeat(20_000)}\r\n\r\n`, 431, 'HEADERS_TOO_LARGE'],
      ['a bad Content-Length', 'POST /ticket_options HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n', 400, 'BAD_HTTP_REQUEST'],
    ]
    for (const [label, request, status, code] of rawCases) {
      const answer = await rawRequest(Number(port), request)
      const [head = '', text = ''] = answer.split('\r\n\r\n')
      t.match(head, new RegExp(`^HTTP/1.1 ${status} `), label)
      checkErrorBody(t, status, /content-type: ([^\r\n]+)/i.exec(head)?.[1], text, code)
    }
  })

  t.test('after all of that the service still sells correctly', async (t) => {
    const bought = await app.inject({ method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 3, user_id: USER } })
    t.equal(bought.statusCode, 201)
    const read = await app.inject({ method: 'GET', url: `/ticket_options/${option}` })
    t.equal(read.json().allocation, 7)
    const { rows } = await sql.query('select count(*)::int as n from purchases')
    t.equal(rows[0].n, 1, 'no bad request bought anything')
    t.same(await unbalancedOptions(sql), [])
  })
})

async function rawRequest (port: number, request: string): Promise<string> {
  return await new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let answer = ''
    socket.setEncoding('utf8')
    socket.on('data', (chunk: string) => { answer += chunk })
    socket.on('error', (err) => { if (answer === '') reject(err) })
    socket.on('close', () => { resolve(answer) })
    socket.write(request)
  })
}

async function keysUnder (redis: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000)
    cursor = next
    keys.push(...batch)
  } while (cursor !== '0')
  return keys.sort()
}

t.test('ids a client invents never create Redis keys', async (t) => {
  const { app, redis, prefix } = await setUp(t)
  const option = await createOption(app, 10)
  t.equal((await app.inject({ method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER } })).statusCode, 201)
  const before = await keysUnder(redis, prefix)
  t.ok(before.length > 0, 'the real option has its queue keys')

  const total = 5000
  let next = 0
  const statuses = new Map<number, number>()
  await Promise.all(Array.from({ length: 50 }, async () => {
    while (next < total) {
      const i = next++
      const made = randomUUID()
      const request: InjectOptions = [
        { method: 'POST', url: `/ticket_options/${made}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { 'idempotency-key': `k${i}` } },
        { method: 'POST', url: `/ticket_options/${made}/purchases`, payload: { quantity: 1, user_id: USER } },
        { method: 'GET', url: `/ticket_options/${made}/purchases/${randomUUID()}` },
        // A made-up purchase of the real option: its queue exists already, nothing new may appear.
        { method: 'GET', url: `/ticket_options/${option}/purchases/${made}` },
      ][i % 4] as InjectOptions
      const res = await app.inject(request)
      statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
    }
  }))
  t.same(Object.fromEntries(statuses), { 404: total }, 'every one a 404')
  // The real option's own queue keys come and go with its worker (marker, stalled-check):
  // those may differ; nothing else may appear, and no key may name an invented id.
  const appeared = (await keysUnder(redis, prefix)).filter((key) => !before.includes(key))
  const foreign = appeared.filter((key) => !key.includes(option) || (key.match(UUID_ANYWHERE) ?? []).some((id) => id !== option))
  t.same(foreign, [], 'no new Redis key for an invented id')
})
