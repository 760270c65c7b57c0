/**
 * The waiting-room example (examples/waiting-room.html) in Debian's chromium,
 * driven by playwright-core: it enqueues with `Prefer: respond-async`, shows
 * the position counting down through a real `EventSource`, then the outcome.
 * Leaves a screenshot at .tap/screenshots/waiting-room.png (git-ignored).
 */
import { existsSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { chromium, type Browser } from 'playwright-core'
import t from 'tap'
import { buildTestApp, configWith, createOption, setUp, startTestWorker, TEST_USER as USER } from '../support/app'
import { ROOT } from '../support/processes'

const CHROMIUM = '/usr/bin/chromium'
const SCREENSHOT = path.join(ROOT, '.tap', 'screenshots', 'waiting-room.png')
const AHEAD = 400

const skip = !existsSync(CHROMIUM) && (process.env.CI ?? '') === ''
  ? `${CHROMIUM} is missing (apt-get install chromium); CI always runs this test`
  : false

t.test('the example page is served only with EXAMPLES=true', async (t) => {
  const environment = await setUp(t, { worker: false })
  t.equal((await environment.app.inject({ method: 'GET', url: '/examples/waiting-room' })).statusCode, 404, 'off by default')
  const app = await buildTestApp(t, configWith(environment, { EXAMPLES: 'true' }))
  const page = await app.inject({ method: 'GET', url: '/examples/waiting-room' })
  t.equal(page.statusCode, 200)
  t.match(page.headers['content-type'], /^text\/html/)
  t.match(page.body, /new EventSource/)
})

t.test('a buyer in the waiting room sees the position count down, then the outcome', { skip }, async (t) => {
  // One purchase per transaction: the line moves slowly enough to watch.
  const { app, config } = await setUp(t, { worker: false, env: { EXAMPLES: 'true', WORKER_BATCH_SIZE: '1' } })
  const option = await createOption(app, AHEAD + 10)
  // A line ahead of the buyer, one job each: added all at once, they would go as a few bundles
  // (api/purchasing/purchase-queues.ts), which a worker applies in a few steps too quick to watch.
  for (let i = 0; i < AHEAD; i++) {
    await app.inject({ method: 'POST', url: `/ticket_options/${option}/purchases`, payload: { quantity: 1, user_id: USER }, headers: { prefer: 'respond-async' } })
  }
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('not listening')
  const base = `http://127.0.0.1:${address.port}`

  const browser: Browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
  })
  t.teardown(async () => { await browser.close() })
  const page = await browser.newPage({ viewport: { width: 700, height: 700 } })
  await page.goto(`${base}/examples/waiting-room?option=${option}`)
  await page.locator('#waiting').filter({ hasText: String(AHEAD) }).waitFor({ timeout: 10_000 })
  await page.click('#join-button')
  await page.locator('#position').filter({ hasText: String(AHEAD) }).waitFor({ timeout: 10_000 })
  t.pass(`the buyer joins behind ${AHEAD}`)

  // Record what the page shows while the line moves.
  const seen: number[] = []
  const sampler = setInterval(() => {
    page.locator('#position').textContent().then((text) => { if (text !== null && /^\d+$/.test(text)) seen.push(Number(text)) }).catch(() => {})
  }, 20)
  await startTestWorker(t, config)
  await page.locator('#outcome[data-status="succeeded"]').waitFor({ timeout: 30_000 })
  clearInterval(sampler)
  const shown = [...new Set(seen)]
  t.comment(`positions shown: ${JSON.stringify(shown.slice(0, 12))}${shown.length > 12 ? '…' : ''}`)
  t.ok(shown.length >= 2, 'the position changed on the page while the buyer waited')
  t.ok(shown.every((p, i) => i === 0 || p <= (shown[i - 1] as number)), 'and only went down')
  t.match(await page.locator('#outcome').textContent(), /Done: 1 ticket\(s\) are yours/)
  mkdirSync(path.dirname(SCREENSHOT), { recursive: true })
  await page.screenshot({ path: SCREENSHOT })
  t.comment(`screenshot: ${path.relative(ROOT, SCREENSHOT)}`)
})
