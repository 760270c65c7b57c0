/**
 * The quick start on a machine with nothing but Node.js (API.md "Where it
 * runs"): `npm start` with no DATABASE_URL and no REDIS_URL, in a network
 * namespace of the test's own, where nothing answers on 127.0.0.1:5432 or
 * :6379. It starts the embedded PostgreSQL, queues on it, sells; a Ctrl-C
 * stops everything (PostgreSQL last) and a second `npm start` finds the data.
 *
 * Needs root for `ip netns` (CI runs as root); skipped otherwise.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { randomSuffix } from '../support/environment'
import { ROOT } from '../support/processes'
import { TEST_USER } from '../support/app'

const canMakeNamespaces = process.getuid?.() === 0 && existsSync('/usr/sbin/ip')

interface Answer { status: number, body: any }

t.test('npm start with nothing installed: sells, stops on Ctrl-C, keeps its data', { skip: canMakeNamespaces ? false : 'needs root and iproute2 for a network namespace' }, async (t) => {
  const ns = `tix-${randomSuffix()}`
  execFileSync('ip', ['netns', 'add', ns])
  t.teardown(() => { execFileSync('ip', ['netns', 'del', ns]) })
  execFileSync('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up'])
  const inNs = (command: string[]): string => execFileSync('ip', ['netns', 'exec', ns, ...command], { encoding: 'utf8' })
  for (const port of [5432, 6379]) {
    t.throws(() => inNs(['bash', '-c', `echo > /dev/tcp/127.0.0.1/${port}`]), `nothing answers on 127.0.0.1:${port}`)
  }

  // The data folder of a fresh checkout's .data/, kept out of this checkout's own.
  const home = mkdtempSync(path.join(os.tmpdir(), 'zero-install-'))
  chmodSync(home, 0o755)
  t.teardown(() => { rmSync(home, { recursive: true, force: true }) })
  const dataDir = path.join(home, 'postgres')

  const call = (method: string, url: string, body?: unknown): Answer => {
    const args = ['curl', '-s', '-m', '20', '-w', '\n%{http_code}', '-X', method, `http://127.0.0.1:3000${url}`]
    if (body !== undefined) args.push('-H', 'content-type: application/json', '-d', JSON.stringify(body))
    const out = inNs(args)
    const cut = out.lastIndexOf('\n')
    const text = out.slice(0, cut)
    return { status: Number(out.slice(cut + 1)), body: text === '' ? null : JSON.parse(text) }
  }

  const output: string[] = []
  const start = async (): Promise<{ child: ChildProcess, readyMs: number }> => {
    const started = Date.now()
    // Only what a fresh shell has: no DATABASE_URL, no REDIS_URL, no QUEUE_BACKEND.
    const child = spawn('ip', ['netns', 'exec', ns, 'npm', 'start'], {
      cwd: ROOT,
      // Its own process group: the Ctrl-C below reaches npm and what runs in its terminal, as a shell's would.
      detached: true,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/root',
        EMBEDDED_POSTGRES_DIR: dataDir,
        LOG_PRETTY: 'false',
        // tap hooks every spawn to add its loaders; these processes compile with tsx (the npm
        // script), whose coverage would be merged onto tap's compilation of the same files and
        // garble the report. test/deploy/launcher.test.ts covers the launcher with tap's loaders.
        _TAPJS_PROCESSINFO_COV_EXCLUDE_: '/./',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    for (const stream of [child.stdout, child.stderr]) stream?.on('data', (chunk: Buffer) => { output.push(chunk.toString()) })
    t.teardown(() => { if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), 'SIGKILL') })
    for (;;) {
      if (child.exitCode !== null) throw new Error(`npm start exited ${child.exitCode}:\n${output.join('')}`)
      try {
        if (call('GET', '/health/ready').status === 200) break
      } catch {}
      if (Date.now() - started > 60_000) throw new Error(`not ready within 60 s:\n${output.join('')}`)
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
    return { child, readyMs: Date.now() - started }
  }
  /** Ctrl-C; true when the service stopped cleanly (npm itself then ends by the SIGINT, as in a shell). */
  const ctrlC = async (child: ChildProcess): Promise<boolean> => {
    const before = output.length
    const exited = new Promise<void>((resolve) => { child.once('exit', () => { resolve() }) })
    process.kill(-(child.pid as number), 'SIGINT')
    await exited
    return /"exitCode":0,"msg":"stopped"/.test(output.slice(before).join(''))
  }
  const postgresRunning = (): boolean => {
    try {
      return execFileSync('pgrep', ['-f', `postgres -D ${dataDir}`], { encoding: 'utf8' }).trim() !== ''
    } catch {
      return false
    }
  }

  const first = await start()
  t.comment(`first start, from an empty data folder, ready in ${first.readyMs} ms`)
  t.match(output.join(''), /started the embedded PostgreSQL/)
  t.match(output.join(''), /"queueBackend":"postgres"/, 'the queues run on PostgreSQL')
  t.same(call('GET', '/health/ready').body, { status: 'ok', checks: { postgres: 'ok' } }, 'ready asks only the store in use')

  const created = call('POST', '/ticket_options', { name: 'example', desc: 'sample description', allocation: 3 })
  t.equal(created.status, 201)
  const option = created.body.id as string
  const bought = call('POST', `/ticket_options/${option}/purchases`, { quantity: 2, user_id: TEST_USER })
  t.equal(bought.status, 201)
  t.match(bought.body, { quantity: 2, status: 'succeeded' })
  const refused = call('POST', `/ticket_options/${option}/purchases`, { quantity: 2, user_id: TEST_USER })
  t.equal(refused.status, 409)
  t.match(refused.body, { code: 'NOT_ENOUGH_TICKETS', requested: 2, available: 1 })

  t.ok(await ctrlC(first.child), 'Ctrl-C: the service stops cleanly')
  t.match(output.join(''), /stopped the embedded PostgreSQL/)
  t.notOk(postgresRunning(), 'PostgreSQL stopped with it')
  const log = output.join('')
  t.ok(log.indexOf('api closing') < log.indexOf('stopped the embedded PostgreSQL'), 'PostgreSQL stopped after the API closed')

  const second = await start()
  t.comment(`second start, on the kept data, ready in ${second.readyMs} ms`)
  t.equal(call('GET', `/ticket_options/${option}`).body.allocation, 1, 'the sale is still there')
  t.match(call('GET', `/ticket_options/${option}/purchases/${bought.body.id as string}`).body, { status: 'succeeded', quantity: 2 })
  t.equal(call('POST', `/ticket_options/${option}/purchases`, { quantity: 1, user_id: TEST_USER }).status, 201, 'and the last ticket sells')
  t.ok(await ctrlC(second.child))
  t.notOk(postgresRunning())
})
