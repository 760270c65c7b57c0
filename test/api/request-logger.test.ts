/**
 * api/request-logger.ts: a request's pino child is made when the request first
 * logs at a level that is on, and logs as the child Fastify would have made.
 */
import { Writable } from 'node:stream'
import t from 'tap'
import pino from 'pino'
import type { FastifyBaseLogger } from 'fastify'
import { requestLogger } from '../../api/request-logger'

function capture (level: string) {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({ write (chunk: Buffer, _encoding, done) { lines.push(JSON.parse(chunk.toString())); done() } })
  const parent = pino({ level }, stream)
  let children = 0
  const child = parent.child
  // Inherited by every child pino makes (each is an Object.create of its parent): called on it, as its own.
  parent.child = function (this: typeof parent, bindings, options) { children++; return child.call(this, bindings, options) } as typeof parent.child
  return { parent, lines, children: () => children }
}

t.test('no child is made while the request logs only at levels that are off', async (t) => {
  const { parent, lines, children } = capture('warn')
  const log = requestLogger(parent, { reqId: 'r-1' }, {})
  log.info({ req: 'x' }, 'incoming request')
  log.debug('detail')
  t.equal(log.level, 'warn')
  t.equal(children(), 0)
  t.same(lines, [])
})

t.test('the first line at a level that is on makes the child once, with the request id bound', async (t) => {
  const { parent, lines, children } = capture('info')
  const log = requestLogger(parent, { reqId: 'r-2' }, {})
  log.info({ code: 'X' }, 'request refused')
  log.error(new Error('boom'), 'failed')
  log.debug('off')
  t.equal(children(), 1, 'made once')
  t.match(lines, [{ reqId: 'r-2', code: 'X', msg: 'request refused', level: 30 }, { reqId: 'r-2', msg: 'failed', level: 50, err: { message: 'boom' } }])
  const nested = log.child({ part: 'a' })
  nested.warn('from a nested child')
  t.match(lines[2], { reqId: 'r-2', part: 'a', msg: 'from a nested child' })
})

t.test('a level set on the request logger applies to it alone', async (t) => {
  const { parent, lines } = capture('warn')
  const log = requestLogger(parent, { reqId: 'r-3' }, {})
  log.level = 'debug'
  log.debug('now on')
  parent.debug('still off for the parent')
  t.equal(log.level, 'debug')
  t.match(lines, [{ reqId: 'r-3', msg: 'now on' }])
})

t.test('a logger that is not pino (an app built with logger: false) makes its child at once', async (t) => {
  let made = 0
  const abstract = { info () {}, error () {}, debug () {}, fatal () {}, warn () {}, trace () {}, silent () {}, level: 'silent', child () { made++; return abstract } } as unknown as FastifyBaseLogger
  t.equal(requestLogger(abstract, { reqId: 'r-4' }, {}), abstract)
  t.equal(made, 1)
})
