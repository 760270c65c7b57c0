/**
 * A deadline for request bodies (BODY_TIMEOUT_MS, 10 s by default): a body
 * trickled in slower than that is cut off with a 408 BODY_TIMEOUT, and its
 * connection is closed, on every route that reads a body. Node's own
 * REQUEST_TIMEOUT_MS bounds the whole request too, but it must outlast a
 * purchase's wait, so alone it would let one client hold a connection and a
 * parser for 15 s per byte-a-second body.
 *
 * The body stream is handed to Fastify's parser through a PassThrough that is
 * destroyed with the error when time is up; the parser passes it to the root
 * error handler, which answers it like every other 4xx. GET and HEAD bodies
 * are never parsed, so they are left to Node's timeout.
 * @see https://fastify.dev/docs/latest/Reference/Hooks/#preparsing
 */
import { PassThrough } from 'node:stream'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { BodyTimeoutError } from '../../shared/error-catalogue'

export interface BodyDeadlineOptions {
  timeoutMs: number
}

function hasBody (request: FastifyRequest): boolean {
  if (request.method === 'GET' || request.method === 'HEAD') return false
  const length = request.headers['content-length']
  return request.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

async function bodyDeadlinePlugin (app: FastifyInstance, { timeoutMs }: BodyDeadlineOptions): Promise<void> {
  const cutOff = new WeakSet<FastifyRequest>()

  app.addHook('preParsing', async (request, _reply, payload) => {
    if (!hasBody(request) || request.raw.complete) return payload
    const guarded = new PassThrough()
    // The parser listens too; this one only keeps an error after the answer from being "unhandled".
    guarded.on('error', () => {})
    const timer = setTimeout(() => {
      cutOff.add(request)
      payload.unpipe(guarded)
      request.log.info({ timeoutMs }, 'request body too slow, cut off')
      guarded.destroy(new BodyTimeoutError(timeoutMs))
    }, timeoutMs)
    const settle = (): void => { clearTimeout(timer) }
    payload.once('end', settle)
    payload.once('close', settle)
    request.raw.socket.once('close', settle)
    payload.pipe(guarded)
    return guarded
  })

  // The rest of a cut-off body may still be on its way: the connection cannot carry another request.
  app.addHook('onSend', async (request, reply, payload) => {
    if (cutOff.has(request)) reply.header('connection', 'close')
    return payload
  })
}

export default fp(bodyDeadlinePlugin, { name: 'body-deadline', dependencies: ['error-handler'] })
