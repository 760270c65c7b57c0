/** The variables of limits and idempotency in shared/config.ts: defaults and refusals. */
import t from 'tap'
import { ConfigError, loadConfig } from '../../shared/config'

t.test('defaults', async (t) => {
  const config = loadConfig({})
  t.equal(config.idempotencyKeyTtlHours, 24)
  t.equal(config.queueMaxWaiting, 10_000)
  t.equal(config.bodyLimitBytes, 16 * 1024)
  t.equal(config.requestTimeoutMs, config.purchaseWaitMs + 10_000, 'follows the wait when unset')
  t.equal(loadConfig({ PURCHASE_WAIT_MS: '60000' }).requestTimeoutMs, 70_000)
  t.equal(config.rateLimitPurchasesPerMinute, 0, 'off')
})

t.test('reads them', async (t) => {
  const config = loadConfig({ IDEMPOTENCY_KEY_TTL_HOURS: '1', QUEUE_MAX_WAITING: '5', BODY_LIMIT_BYTES: '2048', REQUEST_TIMEOUT_MS: '7000', PURCHASE_WAIT_MS: '6000', RATE_LIMIT_PURCHASES_PER_MINUTE: '30' })
  t.match(config, { idempotencyKeyTtlHours: 1, queueMaxWaiting: 5, bodyLimitBytes: 2048, requestTimeoutMs: 7000, rateLimitPurchasesPerMinute: 30 })
})

const bad: Array<[Record<string, string>, string, RegExp?]> = [
  [{ IDEMPOTENCY_KEY_TTL_HOURS: '0' }, 'IDEMPOTENCY_KEY_TTL_HOURS'],
  [{ IDEMPOTENCY_KEY_TTL_HOURS: 'day' }, 'IDEMPOTENCY_KEY_TTL_HOURS'],
  [{ QUEUE_MAX_WAITING: '0' }, 'QUEUE_MAX_WAITING'],
  [{ BODY_LIMIT_BYTES: '100' }, 'BODY_LIMIT_BYTES'],
  [{ BODY_LIMIT_BYTES: '16k' }, 'BODY_LIMIT_BYTES'],
  [{ REQUEST_TIMEOUT_MS: '-1' }, 'REQUEST_TIMEOUT_MS'],
  [{ REQUEST_TIMEOUT_MS: '5000' }, 'REQUEST_TIMEOUT_MS', /at least PURCHASE_WAIT_MS \+ 1000 \(6000\), got 5000/],
  [{ REQUEST_TIMEOUT_MS: '2000', PURCHASE_WAIT_MS: '1500' }, 'REQUEST_TIMEOUT_MS', /PURCHASE_WAIT_MS/],
  [{ RATE_LIMIT_PURCHASES_PER_MINUTE: '-5' }, 'RATE_LIMIT_PURCHASES_PER_MINUTE'],
  [{ RATE_LIMIT_PURCHASES_PER_MINUTE: '1.5' }, 'RATE_LIMIT_PURCHASES_PER_MINUTE'],
]
for (const [env, name, message] of bad) {
  t.test(`${JSON.stringify(env)} is refused naming ${name}`, async (t) => {
    const err = (() => { try { loadConfig(env) } catch (e) { return e } })()
    t.ok(err instanceof ConfigError, 'a ConfigError')
    t.match((err as Error).message, new RegExp(`^${name} `))
    if (message !== undefined) t.match((err as Error).message, message)
  })
}
