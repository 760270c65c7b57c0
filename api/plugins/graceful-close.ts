/**
 * Lets keep-alive connections go while the server closes, so that shutdown
 * ends when the requests in flight are answered. Node's `server.close()`
 * waits for every connection to end, and a keep-alive connection that has
 * just answered an in-flight request stays open until `keepAliveTimeout`
 * (72 s in Fastify), far past the shutdown budget. So from `preClose` on,
 * every response carries `Connection: close`, connections that fall idle are
 * closed until the server is closed, and a new request is a 503 SHUTTING_DOWN. The onClose hooks (queues, the
 * outcome subscriber, pools) only run after that, so every in-flight purchase
 * still gets its real outcome.
 * @see https://fastify.dev/docs/latest/Reference/Server/#forcecloseconnections
 * @see https://fastify.dev/docs/latest/Reference/Hooks/#preclose
 */
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { catalogueBody, RETRY_AFTER_SECONDS } from '../../shared/error-catalogue'

/** How often idle connections are swept while closing (ms). */
const IDLE_SWEEP_MS = 50

async function gracefulClosePlugin (app: FastifyInstance): Promise<void> {
  let closing = false
  let sweeper: NodeJS.Timeout | undefined

  app.addHook('preClose', async () => {
    closing = true
    sweeper = setInterval(() => { app.server.closeIdleConnections() }, IDLE_SWEEP_MS)
    sweeper.unref()
  })

  // A request that arrives on a kept-alive connection while the server closes
  // (before the sweep above reaches it) gets the service's own 503, with a
  // code and Retry-After, where Fastify's return503OnClosing would send a
  // body without either.
  app.addHook('onRequest', (_request, reply, done) => {
    if (!closing) {
      done()
      return
    }
    reply.code(503).header('retry-after', String(RETRY_AFTER_SECONDS)).header('connection', 'close').send(catalogueBody('SHUTTING_DOWN'))
  })

  app.addHook('onSend', (_request, reply, payload, done) => {
    if (closing) reply.header('connection', 'close')
    done(null, payload)
  })

  app.addHook('onClose', async () => { clearInterval(sweeper) })
}

export default fp(gracefulClosePlugin, { name: 'graceful-close' })
