/**
 * Secrets stay out of logs and start-up errors: connection-string passwords
 * (shared/logger.ts redactUrl and the redact paths) and the dashboard
 * password, including in the message of a rejected configuration.
 */
import pino from 'pino'
import t from 'tap'
import { ConfigError, loadConfig } from '../../shared/config'
import { loggerOptions } from '../../shared/logger'
import { redactUrl } from '../../shared/redact-url'

const DB_PASSWORD = 's3cret-db-pw'
const REDIS_PASSWORD = 'r3dis-pw'
const DASHBOARD_PASSWORD = 'dashboard-pw-long-enough'

t.test('redactUrl hides the password and keeps the rest', async (t) => {
  const cases: Array<[string, string]> = [
    [`postgres://app:${DB_PASSWORD}@db:5432/tickets`, 'postgres://app:***@db:5432/tickets'],
    [`postgresql://app:${DB_PASSWORD}@db/tickets?sslmode=require`, 'postgresql://app:***@db/tickets?sslmode=require'],
    [`redis://:${REDIS_PASSWORD}@redis:6379`, 'redis://:***@redis:6379'],
    [`rediss://default:${REDIS_PASSWORD}@redis:6380/0`, 'rediss://default:***@redis:6380/0'],
    ['postgres://app:p@ss@word@db/tickets', 'postgres://app:***@db/tickets'],
    ['postgres://postgres@127.0.0.1:5432/tickets', 'postgres://postgres@127.0.0.1:5432/tickets'],
    ['redis://127.0.0.1:6379', 'redis://127.0.0.1:6379'],
  ]
  for (const [url, expected] of cases) t.equal(redactUrl(url), expected, url)
})

t.test('logging the config never prints a password', async (t) => {
  const config = loadConfig({
    DATABASE_URL: `postgres://app:${DB_PASSWORD}@db:5432/tickets`,
    REDIS_URL: `redis://:${REDIS_PASSWORD}@redis:6379`,
    DASHBOARD_USER: 'operator',
    DASHBOARD_PASSWORD,
    LOG_PRETTY: 'false',
  })
  const lines: string[] = []
  const log = pino(loggerOptions(config, 'test'), { write: (line: string) => { lines.push(line) } })
  log.info({ config }, 'configuration')
  log.child({ config }).warn('child with the configuration')
  log.info({ database: redactUrl(config.databaseUrl) }, 'database created')
  const text = lines.join('')
  t.equal(lines.length, 3)
  for (const secret of [DB_PASSWORD, REDIS_PASSWORD, DASHBOARD_PASSWORD]) t.notOk(text.includes(secret), `${secret} is not logged`)
  t.match(JSON.parse(lines[0] as string), { config: { databaseUrl: '***', redisUrl: '***', dashboard: { user: 'operator', password: '***' } } })
  t.match(JSON.parse(lines[2] as string), { database: 'postgres://app:***@db:5432/tickets' })
})

t.test('a rejected configuration names the variable but not its password', async (t) => {
  const bad: Array<[string, string]> = [
    ['DATABASE_URL', `mysql://app:${DB_PASSWORD}@db/tickets`],
    ['REDIS_URL', `http://:${REDIS_PASSWORD}@redis:6379`],
  ]
  for (const [name, value] of bad) {
    try {
      loadConfig({ [name]: value })
      t.fail(`${name}=${value} was accepted`)
    } catch (err) {
      t.ok(err instanceof ConfigError)
      const message = (err as Error).message
      t.match(message, new RegExp(`^${name} is invalid`))
      t.match(message, /:\*\*\*@/, 'shows the value with its password hidden')
      t.notOk(message.includes(DB_PASSWORD) || message.includes(REDIS_PASSWORD), `${name}: no password in "${message}"`)
    }
  }
})
