/**
 * Builds the API and a worker in this process for route tests
 * (`app.inject`), closed in teardown.
 */
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { buildApp } from '../../api/app'
import { loadConfig, type Config } from '../../shared/config'
import { startWorker, type RunningWorker } from '../../worker/main'
import { createTestEnvironment, type Teardown, type TestEnvironment } from './environment'

export async function buildTestApp (t: Teardown, config: Config): Promise<FastifyInstance> {
  const app = await buildApp(config, { logger: false })
  t.teardown(async () => { await app.close() })
  await app.ready()
  return app
}

export async function startTestWorker (t: Teardown, config: Config): Promise<RunningWorker> {
  const worker = await startWorker(config, pino({ level: 'silent' }))
  t.teardown(async () => { await worker.close() })
  return worker
}

/** A test database and prefix, an app on it, and (unless `worker: false`) a worker. */
export async function setUp (t: Teardown, options: { env?: Record<string, string>, worker?: boolean } = {}): Promise<TestEnvironment & { app: FastifyInstance, worker: RunningWorker | null }> {
  const environment = await createTestEnvironment(t, options.env)
  const app = await buildTestApp(t, environment.config)
  const worker = options.worker === false ? null : await startTestWorker(t, environment.config)
  return { ...environment, app, worker }
}

export function configWith (environment: TestEnvironment, overrides: Record<string, string>): Config {
  return loadConfig({ ...environment.env, ...overrides })
}

/** The buyer of most tests. */
export const TEST_USER = '406c1d05-bbb2-4e94-b183-7d208c2692e1'

export interface BuyOptions {
  quantity?: number
  /** sent as the Idempotency-Key header */
  key?: string
  userId?: string
}

/** A purchase through `app.inject`; the answer also says how long it took (`tookMs`). */
export async function buy (app: FastifyInstance, optionId: string, { quantity = 1, key, userId = TEST_USER }: BuyOptions = {}) {
  const started = Date.now()
  const res = await app.inject({
    method: 'POST',
    url: `/ticket_options/${optionId}/purchases`,
    headers: key === undefined ? {} : { 'idempotency-key': key },
    payload: { quantity, user_id: userId },
  })
  return Object.assign(res, { tookMs: Date.now() - started })
}

/** Creates an option through the API and returns its id. */
export async function createOption (app: FastifyInstance, allocation: number, name = 'test option'): Promise<string> {
  const res = await app.inject({ method: 'POST', url: '/ticket_options', payload: { name, desc: 'test', allocation } })
  if (res.statusCode !== 201) throw new Error(`create option answered ${res.statusCode}: ${res.body}`)
  return (res.json() as { id: string }).id
}
