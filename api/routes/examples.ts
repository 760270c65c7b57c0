/**
 * GET /examples/waiting-room (EXAMPLES=true only): a waiting-room page that
 * enqueues with `Prefer: respond-async` and follows the buyer's position and
 * outcome over Server-Sent Events (examples/waiting-room.html). Left out of
 * the OpenAPI document: it is a page, not part of the API.
 */
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import type { FastifyPluginAsync } from 'fastify'

/** Where examples/ is, from source and from dist/ alike. */
const EXAMPLES_DIR = path.resolve(__dirname, __dirname.includes(`${path.sep}dist${path.sep}`) ? '../../..' : '../..', 'examples')

const exampleRoutes: FastifyPluginAsync = async (app) => {
  const page = await readFile(path.join(EXAMPLES_DIR, 'waiting-room.html'), 'utf8')
  app.get('/examples/waiting-room', async (_request, reply) => await reply.type('text/html; charset=utf-8').send(page))
}

export default exampleRoutes
