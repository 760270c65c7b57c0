import path from 'node:path'
import t from 'tap'
import { ConfigError, loadConfig } from '../../shared/config'
import { coverageEnv, nodeArgs } from '../support/processes'

t.test('defaults work with no variables set', async (t) => {
  const config = loadConfig({})
  t.equal(config.port, 3000)
  t.equal(config.host, '127.0.0.1')
  // Nothing installed: the embedded PostgreSQL, in the checkout's .data/, and the queues on it.
  t.equal(config.databaseUrl, 'postgres://postgres@127.0.0.1:54329/tickets')
  t.equal(config.embeddedPostgres?.port, 54329)
  t.match(config.embeddedPostgres?.dataDir, /\/\.data\/postgres$/)
  t.equal(config.queueBackend, 'postgres')
  t.equal(config.redisUrl, 'redis://127.0.0.1:6379')
  t.equal(config.queuePrefix, 'tickets')
  t.equal(config.purchaseWaitMs, 5000)
  t.ok(Object.isFrozen(config))
})

t.test('reads and converts variables', async (t) => {
  const config = loadConfig({ PORT: '8080', PURCHASE_WAIT_MS: '250', WORKER_BATCH_SIZE: '1', LOG_LEVEL: 'debug', LOG_PRETTY: 'true', DATABASE_URL: 'postgresql://u:p@db:5432/x' })
  t.equal(config.port, 8080)
  t.equal(config.purchaseWaitMs, 250)
  t.equal(config.workerBatchSize, 1)
  t.equal(config.logLevel, 'debug')
  t.equal(config.logPretty, true)
  t.equal(config.databaseUrl, 'postgresql://u:p@db:5432/x')
  t.equal(config.embeddedPostgres, null, 'a DATABASE_URL of your own: nothing embedded')
})

t.test('the queue backend: Redis when REDIS_URL is set, PostgreSQL otherwise, QUEUE_BACKEND decides', async (t) => {
  t.equal(loadConfig({ REDIS_URL: 'redis://cache:6379' }).queueBackend, 'redis')
  t.equal(loadConfig({}).queueBackend, 'postgres')
  t.equal(loadConfig({ REDIS_URL: 'redis://cache:6379', QUEUE_BACKEND: 'postgres' }).queueBackend, 'postgres')
  const local = loadConfig({ QUEUE_BACKEND: 'redis' })
  t.same([local.queueBackend, local.redisUrl], ['redis', 'redis://127.0.0.1:6379'], 'Redis on this machine when none is named')
  t.throws(() => loadConfig({ QUEUE_BACKEND: 'kafka' }), /QUEUE_BACKEND is invalid/)
  t.equal(loadConfig({ EMBEDDED_POSTGRES_DIR: '/var/tmp/pg' }).embeddedPostgres?.dataDir, '/var/tmp/pg')
  t.throws(() => loadConfig({ EMBEDDED_POSTGRES_PORT: '70000' }), /EMBEDDED_POSTGRES_PORT/)
})

t.test('REDIS_CLUSTER_NODES: a Redis Cluster instead of REDIS_URL', async (t) => {
  const config = loadConfig({ REDIS_CLUSTER_NODES: 'redis-1:7000, redis-2:7001,10.0.0.3:7002,[::1]:7003' })
  t.equal(config.queueBackend, 'redis', 'the queues go on it')
  t.same(config.redisClusterNodes, [{ host: 'redis-1', port: 7000 }, { host: 'redis-2', port: 7001 }, { host: '10.0.0.3', port: 7002 }, { host: '::1', port: 7003 }])
  t.equal(loadConfig({}).redisClusterNodes, null)
  t.equal(loadConfig({ REDIS_CLUSTER_NODES: 'r:7000', QUEUE_BACKEND: 'postgres' }).queueBackend, 'postgres', 'QUEUE_BACKEND still decides')
  t.throws(() => loadConfig({ REDIS_CLUSTER_NODES: 'r:7000', REDIS_URL: 'redis://r:6379' }), { name: 'ConfigError', message: /REDIS_CLUSTER_NODES and REDIS_URL are both set/ })
  for (const bad of ['redis-1', 'redis-1:0', 'redis-1:70000', 'redis://r:7000', 'a:1,b', ' , ']) {
    t.throws(() => loadConfig({ REDIS_CLUSTER_NODES: bad }), { name: 'ConfigError', message: /^REDIS_CLUSTER_NODES / }, `refused: ${JSON.stringify(bad)}`)
  }
})

t.test('the hardening settings: body deadline, proxies; holds and ledger schedules', async (t) => {
  const defaults = loadConfig({})
  t.equal(defaults.bodyTimeoutMs, 10_000)
  t.equal(defaults.trustProxy, false)
  t.equal(defaults.holdSweepMs, 1000)
  t.equal(defaults.reconcileIntervalMs, 30_000)
  t.equal(loadConfig({ TRUST_PROXY: 'true' }).trustProxy, true)
  t.equal(loadConfig({ TRUST_PROXY: '2' }).trustProxy, 2, 'a hop count')
  t.same(loadConfig({ TRUST_PROXY: '10.0.0.0/8, 127.0.0.1,::1' }).trustProxy, ['10.0.0.0/8', '127.0.0.1', '::1'])
})

t.test('a setting that is gone stops start-up and says what to do instead', async (t) => {
  t.throws(() => loadConfig({ MAX_TICKETS_PER_PURCHASE: '10000' }), { name: 'ConfigError', message: /^MAX_TICKETS_PER_PURCHASE is no longer used: .*max_per_purchase/ })
})

t.test('an empty variable means the default', async (t) => {
  t.equal(loadConfig({ PORT: '' }).port, 3000)
})

const bad: Array<[Record<string, string>, string]> = [
  [{ PORT: 'abc' }, 'PORT'],
  [{ PORT: '70000' }, 'PORT'],
  [{ PORT: '-1' }, 'PORT'],
  [{ DATABASE_URL: 'mysql://x' }, 'DATABASE_URL'],
  [{ REDIS_URL: 'http://x' }, 'REDIS_URL'],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL'],
  [{ QUEUE_PREFIX: 'a:b' }, 'QUEUE_PREFIX'],
  [{ PURCHASE_WAIT_MS: '1.5' }, 'PURCHASE_WAIT_MS'],
  [{ WORKER_BATCH_SIZE: '0' }, 'WORKER_BATCH_SIZE'],
  [{ DATABASE_POOL_SIZE: '0' }, 'DATABASE_POOL_SIZE'],
  [{ LOG_PRETTY: 'yes' }, 'LOG_PRETTY'],
  [{ BODY_TIMEOUT_MS: '50' }, 'BODY_TIMEOUT_MS'],
  [{ BODY_TIMEOUT_MS: 'soon' }, 'BODY_TIMEOUT_MS'],
  [{ MAX_TICKETS_PER_PURCHASE: '10000' }, 'MAX_TICKETS_PER_PURCHASE'],
  [{ HOLD_SWEEP_MS: '10' }, 'HOLD_SWEEP_MS'],
  [{ RECONCILE_INTERVAL_MS: '10' }, 'RECONCILE_INTERVAL_MS'],
  [{ TRUST_PROXY: 'yes please' }, 'TRUST_PROXY'],
  [{ TRUST_PROXY: '10.0.0.0/8,not-an-ip' }, 'TRUST_PROXY'],
  [{ TRUST_PROXY: '0' }, 'TRUST_PROXY'],
]
for (const [env, name] of bad) {
  t.test(`a bad ${name} stops start-up with a message naming it`, async (t) => {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, 'a ConfigError')
    t.match((err as Error).message, new RegExp(`^${name} `))
  })
}

t.test('the entry points exit 1 naming the bad variable', async (t) => {
  const { spawnSync } = await import('node:child_process')
  for (const entry of ['api/server.ts', 'worker/main.ts', 'migrations/migrate.ts']) {
    const run = spawnSync(process.execPath, [...nodeArgs(), entry], {
      cwd: path.resolve(__dirname, '..', '..'),
      env: { PATH: process.env.PATH, ...coverageEnv(), PURCHASE_WAIT_MS: 'soon' },
      encoding: 'utf8',
      timeout: 30_000,
    })
    t.equal(run.status, 1, `${entry} exit code`)
    t.match(run.stderr, /PURCHASE_WAIT_MS/, `${entry} names the variable`)
  }
})
