/**
 * The dashboard in a real browser: Debian's chromium driven by playwright-core
 * against the API listening on a free port, with an in-process worker.
 * Leaves a screenshot of the option's queue at .tap/screenshots/dashboard-queue.png
 * (git-ignored). Skipped only on a developer machine without /usr/bin/chromium;
 * in CI (CI set) it always runs.
 */
import { existsSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { chromium, type Browser } from 'playwright-core'
import t from 'tap'
import { purchaseQueueName } from '../../shared/queues/queue-names'
import { createOption, setUp } from '../support/app'
import { QUEUED } from '../support/environment'
import { ROOT } from '../support/processes'

const CHROMIUM = '/usr/bin/chromium'
const USER = 'ops'
const PASSWORD = 'correct horse battery'
const OPTION_NAME = 'Summer festival, day pass'
const USER_ID = '406c1d05-bbb2-4e94-b183-7d208c2692e1'
const SCREENSHOT = path.join(ROOT, '.tap', 'screenshots', 'dashboard-queue.png')

// In CI a missing chromium is a failure (the launch throws), never a skip.
const skip = !existsSync(CHROMIUM) && (process.env.CI ?? '') === ''
  ? `${CHROMIUM} is missing (apt-get install chromium); CI always runs this test`
  : false

t.test('the dashboard in a browser', { skip }, async (t) => {
  const { app } = await setUp(t, { env: { DASHBOARD_USER: USER, DASHBOARD_PASSWORD: PASSWORD, ...QUEUED } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('the API is not listening on TCP')
  const base = `http://127.0.0.1:${address.port}`

  const optionId = await createOption(app, 100, OPTION_NAME)
  const purchaseIds: string[] = []
  for (const quantity of [1, 2, 3]) {
    const res = await app.inject({ method: 'POST', url: `/ticket_options/${optionId}/purchases`, payload: { quantity, user_id: USER_ID } })
    t.equal(res.statusCode, 201)
    purchaseIds.push((res.json() as { id: string }).id)
  }

  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  })
  t.teardown(async () => { await browser.close() })

  t.test('without or with wrong credentials the page is refused', async (t) => {
    for (const httpCredentials of [undefined, { username: USER, password: `${PASSWORD}!` }]) {
      const context = await browser.newContext(httpCredentials === undefined ? {} : { httpCredentials })
      t.teardown(async () => { await context.close() })
      const page = await context.newPage()
      const answered = page.waitForResponse(`${base}/admin/queues`)
      // Headless chromium has no login prompt: without credentials the navigation fails
      // (ERR_INVALID_AUTH_CREDENTIALS), with wrong ones it shows the 401 body.
      await page.goto(`${base}/admin/queues`).catch(() => null)
      const res = await answered
      t.equal(res.status(), 401)
      t.equal(res.headers()['www-authenticate'], 'Basic realm="queue dashboard", charset="UTF-8"')
      t.notMatch(await res.text(), OPTION_NAME)
      t.notMatch(await page.content(), OPTION_NAME)
    }
  })

  t.test('with credentials: the option\'s queue and its completed purchases', async (t) => {
    const context = await browser.newContext({ httpCredentials: { username: USER, password: PASSWORD }, viewport: { width: 1400, height: 900 } })
    t.teardown(async () => { await context.close() })
    const page = await context.newPage()
    const res = await page.goto(`${base}/admin/queues`)
    t.equal(res?.status(), 200)
    await page.getByText(OPTION_NAME).first().waitFor({ timeout: 15_000 })
    await page.getByRole('link', { name: OPTION_NAME }).first().click()
    await page.waitForURL(`${base}/admin/queues/queue/${encodeURIComponent(purchaseQueueName(optionId))}**`)
    await page.getByRole('link', { name: /completed/i }).first().click()
    await page.waitForURL(/status=completed/)
    for (const purchaseId of purchaseIds) await page.getByText(purchaseId).first().waitFor({ timeout: 15_000 })
    const text = await page.locator('body').innerText()
    t.match(text, OPTION_NAME, 'the option\'s name heads the queue page')
    t.match(text, `ticket option ${optionId}`)
    t.match(text, /COMPLETED\s*3/i, 'three completed jobs')
    for (const purchaseId of purchaseIds) t.match(text, purchaseId, `completed job ${purchaseId} is shown`)
    t.match(text, /status:\s*"succeeded"/, 'with its outcome')
    t.notMatch(text, /\bRetry\b/i, 'no retry button in read-only mode')
    mkdirSync(path.dirname(SCREENSHOT), { recursive: true })
    await page.screenshot({ path: SCREENSHOT, fullPage: false })
    t.comment(`screenshot: ${path.relative(ROOT, SCREENSHOT)}`)
  })
})
