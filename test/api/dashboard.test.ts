import t from 'tap'
import { LIST_MAX_AGE_MS } from '../../api/plugins/dashboard'
import { ConfigError, loadConfig } from '../../shared/config'
import { activeOptionsKey, purchaseQueueName } from '../../shared/queues/queue-names'
import { createOption, setUp } from '../support/app'
import { eachQueueBackend, QUEUED } from '../support/environment'
import { sleep } from '../support/wait'

const USER_ID = '406c1d05-bbb2-4e94-b183-7d208c2692e1'
const PASSWORD = 'correct horse battery'
const CREDENTIALS = { DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: PASSWORD }
const basic = (user: string, password: string): Record<string, string> =>
  ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` })
const AUTH = basic('ops', PASSWORD)

interface ListedQueue { name: string, displayName?: string, description?: string, readOnlyMode: boolean, allowRetries: boolean, counts: Record<string, number> }

t.test('dashboard configuration: both variables or neither, a long enough password', async (t) => {
  t.equal(loadConfig({}).dashboard, null, 'closed by default')
  t.same(loadConfig(CREDENTIALS).dashboard, { user: 'ops', password: PASSWORD })
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ DASHBOARD_USER: 'ops' }, /^DASHBOARD_PASSWORD must be set when DASHBOARD_USER is/],
    [{ DASHBOARD_PASSWORD: PASSWORD }, /^DASHBOARD_USER must be set when DASHBOARD_PASSWORD is/],
    [{ DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: 'short-pw' }, /^DASHBOARD_PASSWORD must be 12 to 200 characters long, got 8$/],
    [{ DASHBOARD_USER: 'ops', DASHBOARD_PASSWORD: 'x'.repeat(201) }, /^DASHBOARD_PASSWORD must be 12 to 200 characters long/],
    [{ DASHBOARD_USER: 'o:ps', DASHBOARD_PASSWORD: PASSWORD }, /^DASHBOARD_USER is invalid/],
  ]
  for (const [env, message] of cases) {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, `${JSON.stringify(Object.keys(env))} is a ConfigError`)
    t.match((err as Error).message, message)
    if (env.DASHBOARD_PASSWORD !== undefined) t.notMatch((err as Error).message, env.DASHBOARD_PASSWORD, 'the password is never echoed')
  }
})

t.test('without credentials the dashboard does not exist', async (t) => {
  const { app } = await setUp(t, { worker: false })
  for (const url of ['/admin/queues', '/admin/queues/', '/admin/queues/api/queues']) {
    const res = await app.inject({ method: 'GET', url, headers: AUTH })
    t.equal(res.statusCode, 404, url)
    t.match(res.json(), { statusCode: 404, error: 'Not Found', code: 'ROUTE_NOT_FOUND' })
    t.notOk(res.headers['www-authenticate'], 'no challenge reveals it')
  }
})

eachQueueBackend(t, 'with credentials', async (t, backendEnv) => {
  const { app, prefix, redis, openQueues } = await setUp(t, { env: { ...CREDENTIALS, ...backendEnv, ...QUEUED } })

  t.test('no, malformed or wrong credentials are a 401 with a challenge', async (t) => {
    const attempts: Array<[string, Record<string, string>]> = [
      ['no credentials', {}],
      ['a wrong password', basic('ops', `${PASSWORD}!`)],
      ['a wrong user', basic('admin', PASSWORD)],
      ['another scheme', { authorization: 'Bearer abc' }],
      ['malformed base64', { authorization: 'Basic %%%' }],
    ]
    for (const [label, headers] of attempts) {
      for (const url of ['/admin/queues', '/admin/queues/api/queues', '/admin/queues/static/favicon-32x32.png']) {
        const res = await app.inject({ method: 'GET', url, headers })
        t.equal(res.statusCode, 401, `${label}: ${url}`)
        t.equal(res.headers['www-authenticate'], 'Basic realm="queue dashboard", charset="UTF-8"')
        t.same(res.json(), { statusCode: 401, error: 'Unauthorized', message: 'The queue dashboard needs valid credentials', code: 'DASHBOARD_UNAUTHORIZED' })
      }
    }
  })

  t.test('the right credentials open the page and its assets', async (t) => {
    for (const url of ['/admin/queues', '/admin/queues/']) {
      const res = await app.inject({ method: 'GET', url, headers: AUTH })
      t.equal(res.statusCode, 200, url)
      t.match(res.headers['content-type'], /^text\/html/)
      t.match(res.body, /<title>Ticket queues<\/title>/)
    }
    const asset = await app.inject({ method: 'GET', url: '/admin/queues/static/favicon-32x32.png', headers: AUTH })
    t.equal(asset.statusCode, 200)
    const other = await app.inject({ method: 'GET', url: '/ticket_options/406c1d05-bbb2-4e94-b183-7d208c2692e1' })
    t.equal(other.statusCode, 404, 'routes outside the dashboard need no credentials')
  })

  const optionId = await createOption(app, 10, 'Spring concert, balcony')
  const purchase = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/purchases`, payload: { quantity: 2, user_id: USER_ID } })
  t.equal(purchase.statusCode, 201)
  const purchaseId = (purchase.json() as { id: string }).id
  const queueName = purchaseQueueName(optionId)
  const queuePath = `/admin/queues/api/queues/${encodeURIComponent(queueName)}`

  const listQueues = async (): Promise<ListedQueue[]> => {
    const res = await app.inject({ method: 'GET', url: '/admin/queues/api/queues', headers: AUTH })
    t.equal(res.statusCode, 200)
    return (res.json() as { queues: ListedQueue[] }).queues
  }
  const readJob = async (): Promise<{ status: number, job: Record<string, unknown>, state: unknown }> => {
    const res = await app.inject({ method: 'GET', url: `${queuePath}/${purchaseId}`, headers: AUTH })
    const body = res.json() as { job: Record<string, unknown>, status: unknown }
    return { status: res.statusCode, job: body.job, state: body.status }
  }

  t.test('an option\'s queue is listed under the option\'s name, read-only', async (t) => {
    await sleep(LIST_MAX_AGE_MS + 100)
    const queues = await listQueues()
    const listed = queues.find((q) => q.name === queueName)
    t.ok(listed, 'the option queue is listed')
    t.equal(listed?.displayName, 'Spring concert, balcony')
    t.equal(listed?.description, `ticket option ${optionId}`)
    t.equal(listed?.readOnlyMode, true)
    t.equal(listed?.allowRetries, false)
    t.equal(listed?.counts.completed, 1, 'the completed purchase job')
    const { status, job, state } = await readJob()
    t.equal(status, 200)
    t.equal(state, 'completed')
    t.match(job.returnValue, { id: purchaseId, status: 'succeeded', quantity: 2 })
  })

  // On Redis only: PostgreSQL's registry holds uuids, nothing else.
  t.test('a stray registry member is ignored, not fatal', { skip: backendEnv.QUEUE_BACKEND !== 'redis' && 'the registry on PostgreSQL holds uuids only' }, async (t) => {
    await redis.zadd(activeOptionsKey(prefix), Date.now(), 'not-a-uuid')
    t.teardown(async () => { await redis.zrem(activeOptionsKey(prefix), 'not-a-uuid') })
    await sleep(LIST_MAX_AGE_MS + 100)
    const names = (await listQueues()).map((q) => q.name)
    t.same(names, [queueName])
  })

  t.test('changes are refused (403) before bull-board sees them, and the job is unchanged', async (t) => {
    const before = await readJob()
    t.equal(before.state, 'completed')
    const changes: Array<['PUT' | 'POST' | 'PATCH' | 'DELETE', string, object?]> = [
      ['PUT', `${queuePath}/${purchaseId}/retry`],
      ['PUT', `${queuePath}/retry/completed`],
      ['PUT', `${queuePath}/retry/failed`],
      ['PUT', `${queuePath}/${purchaseId}/clean`],
      ['PUT', `${queuePath}/clean/completed`],
      ['PUT', `${queuePath}/${purchaseId}/promote`],
      ['PUT', `${queuePath}/promote`],
      ['PUT', `${queuePath}/pause`],
      ['PUT', `${queuePath}/empty`],
      ['PUT', `${queuePath}/obliterate`, {}],
      ['PUT', `${queuePath}/concurrency`, { concurrency: 5 }],
      ['PUT', '/admin/queues/api/queues/pause'],
      ['PATCH', `${queuePath}/${purchaseId}/update-data`, { quantity: 5 }],
      ['POST', `${queuePath}/add`, { name: 'purchase', data: {} }],
      ['DELETE', `${queuePath}/${purchaseId}`],
      ['POST', '/admin/queues/api/no/such/route'],
    ]
    for (const [method, url, payload] of changes) {
      const res = await app.inject({ method, url, headers: AUTH, ...(payload === undefined ? {} : { payload }) })
      t.equal(res.statusCode, 403, `${method} ${url}`)
      t.same(res.json(), { statusCode: 403, error: 'Forbidden', message: `The queue dashboard is read-only; ${method} is refused`, code: 'DASHBOARD_READ_ONLY' })
      const anonymous = await app.inject({ method, url, ...(payload === undefined ? {} : { payload }) })
      t.equal(anonymous.statusCode, 401, `${method} ${url} without credentials is a 401 first`)
    }
    const after = await readJob()
    t.equal(after.status, 200)
    t.equal(after.state, 'completed', 'the job is still completed')
    t.same(after.job, before.job, 'nothing about the job changed')
    const listed = (await listQueues()).find((q) => q.name === queueName)
    t.equal(listed?.counts.completed, 1)
    t.equal(listed?.counts.waiting ?? 0, 0, 'nothing was added or retried')
    t.equal(listed?.counts.paused ?? 0, 0)
    const option = await app.inject({ method: 'GET', url: `/ticket_options/${optionId}` })
    t.equal(option.json().allocation, 8, 'the purchase was applied once')
  })

  t.test('a queue the workers let go drops off the board', async (t) => {
    const queues = openQueues()
    const [registered] = await queues.listActiveOptions()
    t.equal(registered?.ticketOptionId, optionId)
    t.ok(await queues.releaseOption(optionId, registered?.lastUsedAt ?? 0), 'released from the registry')
    await sleep(LIST_MAX_AGE_MS + 100)
    t.same((await listQueues()).map((q) => q.name), [], 'no longer listed')
    const gone = await app.inject({ method: 'GET', url: `${queuePath}/${purchaseId}`, headers: AUTH })
    t.equal(gone.statusCode, 404, 'its jobs are no longer reachable through the dashboard')
  })
})
