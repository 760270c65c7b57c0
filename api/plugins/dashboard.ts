/**
 * The queue dashboard (bull-board) at /admin/queues, for operators.
 *
 * - Closed unless DASHBOARD_USER and DASHBOARD_PASSWORD are set: nothing is
 *   registered, so /admin/queues is the ordinary JSON 404.
 * - HTTP basic auth on every dashboard route, the page and its assets included
 *   (401 with a WWW-Authenticate challenge).
 * - Read-only, twice over: the adapters run in bull-board's `readOnlyMode`
 *   (which hides the buttons and refuses most changes), and this plugin
 *   refuses every request that is not GET/HEAD with a 403 before bull-board
 *   sees it, because retrying a completed purchase job would buy again.
 * - Lists the option queues of the registry of active options, named after
 *   their options (api/dashboard/dashboard-queues.ts), read again on a dashboard API
 *   request when the list is older than LIST_MAX_AGE_MS; nothing runs while
 *   nobody looks.
 *
 * Keep in sync with API.md "Operator routes" and README.md "Dashboard".
 * @see https://github.com/felixmosh/bull-board
 */
import { createBullBoard } from '@bull-board/api'
import { FastifyAdapter } from '@bull-board/fastify'
import type { FastifyInstance, FastifySchema } from 'fastify'
import fp from 'fastify-plugin'
import type { Logger } from 'pino'
import type { Config } from '../../shared/config'
import { ticketOptionNames } from '../../shared/ticket-options'
import { basicAuthChecker } from '../dashboard/basic-auth'
import { DashboardQueues } from '../dashboard/dashboard-queues'
import { catalogueBody } from '../../shared/error-catalogue'

export const DASHBOARD_PATH = '/admin/queues'
/** Most queues on the board: the least recently used beyond it are left out, so one page stays cheap to draw. */
export const DASHBOARD_MAX_QUEUES = 200
/** How old the list of queues may get before a dashboard request reads it again (ms). */
export const LIST_MAX_AGE_MS = 1000

const CHALLENGE = 'Basic realm="queue dashboard", charset="UTF-8"'

export interface DashboardOptions {
  config: Config
}

async function dashboardPlugin (app: FastifyInstance, { config }: DashboardOptions): Promise<void> {
  const credentials = config.dashboard
  if (credentials === null) return

  const serverAdapter = new FastifyAdapter()
  serverAdapter.setBasePath(DASHBOARD_PATH)
  const board = createBullBoard({ queues: [], serverAdapter, options: { uiConfig: { boardTitle: 'Ticket queues' } } })
  const queues = new DashboardQueues({
    backend: app.queueBackend,
    optionNames: async (ids) => await ticketOptionNames(app.db, ids),
    board,
    // Fastify's logger is a pino logger; its declared type is a narrower interface.
    log: app.log as unknown as Logger,
    maxQueues: DASHBOARD_MAX_QUEUES,
    maxAgeMs: LIST_MAX_AGE_MS,
  })
  const isAuthorized = basicAuthChecker(credentials)

  // Replies instead of throwing: a thrown error would reach bull-board's own
  // error handler (set on its routes), which does not speak API.md's error body.
  app.addHook('onRequest', async (request, reply) => {
    if (!isAuthorized(request.headers.authorization)) {
      reply.code(401).header('www-authenticate', CHALLENGE).send(catalogueBody('DASHBOARD_UNAUTHORIZED'))
      return reply
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      request.log.warn({ method: request.method, url: request.url }, 'refused a change through the read-only dashboard')
      reply.code(403).send(catalogueBody('DASHBOARD_READ_ONLY', [request.method]))
      return reply
    }
    if (request.url.startsWith(`${DASHBOARD_PATH}/api/`)) await queues.refreshIfStale()
  })
  app.addHook('onClose', async () => { await queues.close() })
  // So that every change under the API path meets the hook above (a 403), not only the ones bull-board routes.
  app.route({
    method: ['DELETE', 'PATCH', 'POST', 'PUT'],
    url: `${DASHBOARD_PATH}/api/*`,
    // `hide` keeps it out of the OpenAPI document (@fastify/swagger declares the field).
    schema: { hide: true } as FastifySchema,
    handler: async (request, reply) => {
      return await reply.code(403).send(catalogueBody('DASHBOARD_READ_ONLY', [request.method]))
    },
  })

  await app.register(serverAdapter.registerPlugin(), { prefix: DASHBOARD_PATH })
}

// Encapsulated: the auth and read-only hooks apply to the dashboard's routes only.
export default fp(dashboardPlugin, { name: 'dashboard', dependencies: ['error-handler', 'purchasing'], encapsulate: true })
