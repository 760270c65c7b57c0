import t from 'tap'
import { buildTestApp, createOption } from '../support/app'
import { createTestEnvironment } from '../support/environment'

t.test('ticket options routes', async (t) => {
  const environment = await createTestEnvironment(t)
  const app = await buildTestApp(t, environment.config)

  t.test('creates an option and reads it back', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'example', desc: 'sample description', allocation: 100 } })
    t.equal(res.statusCode, 201)
    const body = res.json()
    t.match(body, { name: 'example', desc: 'sample description', allocation: 100 })
    t.match(body.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/)
    t.same(Object.keys(body).sort(), ['allocation', 'desc', 'id', 'name'])
    t.equal(res.headers.location, `/ticket_options/${body.id}`)
    t.match(res.headers['content-type'], /^application\/json; charset=utf-8/)

    const read = await app.inject({ method: 'GET', url: `/ticket_options/${body.id}` })
    t.equal(read.statusCode, 200)
    t.same(read.json(), body)
    const upper = await app.inject({ method: 'GET', url: `/ticket_options/${String(body.id).toUpperCase()}` })
    t.equal(upper.statusCode, 200, 'an id in capitals names the same option')
    t.equal(upper.json().id, body.id)
  })

  t.test('desc defaults to the empty string; allocation may be 0 or the integer maximum', async (t) => {
    const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'no desc', allocation: 0 } })
    t.equal(res.statusCode, 201)
    t.equal(res.json().desc, '')
    t.equal(res.json().allocation, 0)
    const max = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'max', allocation: 2147483647 } })
    t.equal(max.statusCode, 201)
    t.equal(max.json().allocation, 2147483647)
  })

  const badBodies: Array<[string, unknown, RegExp]> = [
    ['missing name', { allocation: 1 }, /must have required property 'name'/],
    ['blank name', { name: '   ', allocation: 1 }, /body\/name/],
    ['empty name', { name: '', allocation: 1 }, /body\/name/],
    ['name too long', { name: 'x'.repeat(201), allocation: 1 }, /body\/name must NOT have more than 200 characters/],
    ['name with a control character', { name: 'a\u0000b', allocation: 1 }, /body\/name/],
    ['name not a string', { name: 42, allocation: 1 }, /body\/name must be string/],
    ['desc too long', { name: 'a', desc: 'x'.repeat(2001), allocation: 1 }, /body\/desc/],
    ['desc null', { name: 'a', desc: null, allocation: 1 }, /body\/desc must be string/],
    ['missing allocation', { name: 'a' }, /must have required property 'allocation'/],
    ['negative allocation', { name: 'a', allocation: -1 }, /body\/allocation must be >= 0/],
    ['allocation past int32', { name: 'a', allocation: 2147483648 }, /body\/allocation must be <= 2147483647/],
    ['allocation as a string', { name: 'a', allocation: '10' }, /body\/allocation must be integer/],
    ['allocation as a float', { name: 'a', allocation: 1.5 }, /body\/allocation must be integer/],
    ['allocation as a boolean', { name: 'a', allocation: true }, /body\/allocation must be integer/],
    ['allocation as an array', { name: 'a', allocation: [10] }, /body\/allocation must be integer/],
    ['allocation null', { name: 'a', allocation: null }, /body\/allocation must be integer/],
    ['unknown field', { name: 'a', allocation: 1, extra: true }, /must NOT have additional properties/],
    ['an array body', [{ name: 'a', allocation: 1 }], /body must be object/],
  ]
  for (const [label, payload, message] of badBodies) {
    t.test(`400 for ${label}`, async (t) => {
      const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: payload as object })
      t.equal(res.statusCode, 400)
      const body = res.json()
      t.match(body, { statusCode: 400, error: 'Bad Request', code: String })
      t.match(body.message, message)
    })
  }

  t.test('malformed JSON is 400, a body that is not JSON is 415, an oversized one 413', async (t) => {
    const malformed = await app.inject({ method: 'POST', url: '/ticket_options', headers: { 'content-type': 'application/json' }, payload: '{"name": "a", "allocation": ' })
    t.equal(malformed.statusCode, 400)
    t.equal(malformed.json().code, 'FST_ERR_CTP_INVALID_JSON_BODY')
    const text = await app.inject({ method: 'POST', url: '/ticket_options', headers: { 'content-type': 'text/plain' }, payload: 'name=a' })
    t.equal(text.statusCode, 415)
    t.equal(text.json().statusCode, 415)
    const form = await app.inject({ method: 'POST', url: '/ticket_options', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'name=a&allocation=1' })
    t.equal(form.statusCode, 415)
    const huge = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name: 'a', desc: 'x'.repeat(100_000), allocation: 1 } })
    t.equal(huge.statusCode, 413)
    t.equal(huge.json().code, 'FST_ERR_CTP_BODY_TOO_LARGE')
  })

  t.test('reading an unknown or malformed id', async (t) => {
    const unknown = await app.inject({ method: 'GET', url: '/ticket_options/406c1d05-bbb2-4e94-b183-7d208c2692e1' })
    t.equal(unknown.statusCode, 404)
    t.same(unknown.json(), { statusCode: 404, error: 'Not Found', message: 'Ticket option 406c1d05-bbb2-4e94-b183-7d208c2692e1 not found', code: 'TICKET_OPTION_NOT_FOUND' })
    for (const id of ['42', 'not-a-uuid', "1' or '1'='1", '406c1d05bbb24e94b183-7d208c2692e1']) {
      const bad = await app.inject({ method: 'GET', url: `/ticket_options/${encodeURIComponent(id)}` })
      t.equal(bad.statusCode, 400, id)
      t.match(bad.json().message, /params\/id/)
    }
  })

  t.test('unknown routes are a JSON 404', async (t) => {
    const res = await app.inject({ method: 'DELETE', url: '/ticket_options' })
    t.equal(res.statusCode, 404)
    t.match(res.json(), { statusCode: 404, error: 'Not Found', code: 'ROUTE_NOT_FOUND' })
  })

  t.test('the createOption helper the other tests rely on makes an option that reads back', async (t) => {
    const id = await createOption(app, 5, 'made by the helper')
    const read = await app.inject({ method: 'GET', url: `/ticket_options/${id}` })
    t.equal(read.statusCode, 200)
    t.same(read.json(), { id, name: 'made by the helper', desc: 'test', allocation: 5 })
  })
})
