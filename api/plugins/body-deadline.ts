/**
 * A deadline for request bodies (BODY_TIMEOUT_MS, 10 s by default): a body
 * trickled in slower than that is cut off with a 408 BODY_TIMEOUT, and its
 * connection is closed, on every route that reads a body. Node's own
 * REQUEST_TIMEOUT_MS bounds the whole request too, but it must outlast a
 * purchase's wait, so alone it would let one client hold a connection and a
 * parser for 15 s per byte-a-second body.
 *
 * When time is up, the error is emitted on the body stream the parser reads,
 * which passes it to the root error handler, so it is answered like every
 * other 4xx; a timer per request, no stream of our own (a PassThrough per
 * request cost the single-buyer path measurable CPU). GET and HEAD bodies are
 * never parsed, so they are left to Node's timeout.
 * @see https://fastify.dev/docs/latest/Reference/Hooks/#preparsing
 */
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
  app.addHook('preParsing', (request, reply, payload, done) => {
    if (!hasBody(request) || request.raw.complete) {
      done(null, payload)
      return
    }
    const timer = setTimeout(() => {
      // The rest of the body may still be on its way: the connection cannot carry another
      // request. Set now, on the answer not sent yet, rather than by a hook on every answer.
      reply.header('connection', 'close')
      request.log.info({ timeoutMs }, 'request body too slow, cut off')
      // The body parser listens for errors on the stream it reads: it hands this one to
      // the root error handler. Without a parser reading, there is nobody to answer.
      if (payload.listenerCount('error') > 0) payload.emit('error', new BodyTimeoutError(timeoutMs))
      else request.raw.destroy()
    }, timeoutMs)
    const settle = (): void => { clearTimeout(timer) }
    payload.once('end', settle)
    payload.once('close', settle)
    done(null, payload)
  })
}

export default fp(bodyDeadlinePlugin, { name: 'body-deadline', dependencies: ['error-handler'] })
