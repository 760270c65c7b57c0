/**
 * The embedded PostgreSQL's lifecycle (shared/embedded-postgres.ts): created
 * once and reused, joined while its owner lives, adopted when its owner was
 * killed, a stale postmaster.pid recovered, and every failure a message that
 * says what to do. Each test has a data folder and a port of its own.
 */
import { spawn, spawnSync } from 'node:child_process'
import { chmodSync, chownSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import pino from 'pino'
import t, { type Test } from 'tap'
import { EmbeddedPostgresError, startEmbeddedPostgres, type RunningPostgres } from '../../shared/embedded-postgres'
import { freePort } from '../support/free-port'
import { ROOT } from '../support/processes'

const log = pino({ level: 'silent' })

async function settings (t: Test): Promise<{ dataDir: string, port: number, osUser: string }> {
  const home = mkdtempSync(path.join(os.tmpdir(), 'embedded-pg-'))
  chmodSync(home, 0o755) // as a checkout's folders are; mkdtemp makes it 0700
  t.teardown(() => { rmSync(home, { recursive: true, force: true }) })
  return { dataDir: path.join(home, 'postgres'), port: await freePort(), osUser: 'postgres' }
}

async function rows (port: number, text: string): Promise<unknown[]> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' })
  await client.connect()
  try {
    return (await client.query(text)).rows
  } finally {
    await client.end()
  }
}

/** A live process that is not this one, to stand for another owner. */
function otherProcess (t: Test): number {
  const child = spawn('sleep', ['60'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  return child.pid as number
}

function stopLater (t: Test, server: RunningPostgres): void {
  t.teardown(async () => { await server.stop() })
}

t.test('created on first start, data kept across a stop and a second start', async (t) => {
  const s = await settings(t)
  const first = await startEmbeddedPostgres(s, log)
  t.equal(first.owned, true)
  t.ok(existsSync(path.join(s.dataDir, 'PG_VERSION')), 'a data folder was created')
  await rows(s.port, 'create table kept (n int); insert into kept values (42)')
  await first.stop()
  t.notOk(existsSync(path.join(s.dataDir, 'postmaster.pid')), 'stopped cleanly')

  const second = await startEmbeddedPostgres(s, log)
  stopLater(t, second)
  t.same(await rows(s.port, 'select n from kept'), [{ n: 42 }], 'the data survived')
  t.same(await rows(s.port, "select current_setting('listen_addresses') as a"), [{ a: '127.0.0.1' }], 'loopback only')
})

t.test('joined while its owner lives, adopted once the owner is gone', async (t) => {
  const s = await settings(t)
  const server = await startEmbeddedPostgres(s, log)
  stopLater(t, server)
  const ownerFile = path.join(path.dirname(s.dataDir), 'owner.pid')
  const other = otherProcess(t)
  writeFileSync(ownerFile, String(other))

  const guest = await startEmbeddedPostgres(s, log)
  t.equal(guest.owned, false, 'another live process owns it: joined')
  await guest.stop()
  t.same(await rows(s.port, 'select 1 as one'), [{ one: 1 }], "a guest's stop leaves it running")

  process.kill(other, 'SIGKILL')
  await new Promise((resolve) => setTimeout(resolve, 100))
  const adopted = await startEmbeddedPostgres(s, log)
  t.equal(adopted.owned, true, 'its owner is gone: adopted, so someone stops it')
  t.equal(readFileSync(ownerFile, 'utf8'), String(process.pid))
  await adopted.stop()
  t.notOk(existsSync(path.join(s.dataDir, 'postmaster.pid')), 'and the adopter stopped it')
})

t.test('a stale postmaster.pid (its process gone) is removed and the server starts', async (t) => {
  const s = await settings(t)
  await (await startEmbeddedPostgres(s, log)).stop()
  // As a kill -9 of the whole machine leaves it: a pid that is no process now.
  writeFileSync(path.join(s.dataDir, 'postmaster.pid'), `999999\n${s.dataDir}\n1700000000\n${s.port}\n\n127.0.0.1\n`)
  const server = await startEmbeddedPostgres(s, log)
  stopLater(t, server)
  t.equal(server.owned, true)
  t.same(await rows(s.port, 'select 1 as one'), [{ one: 1 }])
})

t.test('as a normal user too: no OS user to switch to, the server runs as the caller', { skip: process.getuid?.() !== 0 ? 'needs root to start a process as another user' : false }, async (t) => {
  const s = await settings(t)
  const nobody = 65534
  chownSync(path.dirname(s.dataDir), nobody, nobody)
  const child = spawnSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'test/support/embedded-postgres-child.ts')], {
    cwd: ROOT,
    uid: nobody,
    gid: nobody,
    // No coverage from it: compiled by tsx, it would garble tap's report of the same files.
    env: { PATH: process.env.PATH ?? '', HOME: path.dirname(s.dataDir), EMBEDDED_POSTGRES_DIR: s.dataDir, EMBEDDED_POSTGRES_PORT: String(s.port), _TAPJS_PROCESSINFO_COV_EXCLUDE_: '/./' },
    encoding: 'utf8',
    timeout: 60_000,
  })
  t.equal(child.status, 0, child.stderr)
  t.same(JSON.parse(child.stdout), { uid: nobody, owned: true, answered: { one: 1 } })
})

t.test('failures say what went wrong and what to do, never `undefined`', async (t) => {
  t.test('the port is taken by another PostgreSQL', async (t) => {
    const s = await settings(t)
    const server = await startEmbeddedPostgres(s, log)
    stopLater(t, server)
    const elsewhere = { ...s, dataDir: path.join(path.dirname(s.dataDir), 'other') }
    const err = await startEmbeddedPostgres(elsewhere, log).catch((e: unknown) => e)
    t.ok(err instanceof EmbeddedPostgresError)
    t.match((err as Error).message, `port ${s.port} is taken by another PostgreSQL; set EMBEDDED_POSTGRES_PORT`)
  })

  t.test('the data folder holds something else', async (t) => {
    const s = await settings(t)
    mkdirSync(s.dataDir, { recursive: true })
    writeFileSync(path.join(s.dataDir, 'notes.txt'), 'not a database')
    const err = await startEmbeddedPostgres(s, log).catch((e: unknown) => e)
    t.ok(err instanceof EmbeddedPostgresError)
    t.match((err as Error).message, /is not empty and holds no PostgreSQL data \(no PG_VERSION\)/)
  })

  t.test('as root, a data folder the PostgreSQL OS user cannot reach', { skip: process.getuid?.() !== 0 ? 'not root' : false }, async (t) => {
    const s = await settings(t)
    const closed = path.dirname(s.dataDir)
    chmodSync(closed, 0o700)
    const err = await startEmbeddedPostgres(s, log).catch((e: unknown) => e)
    t.ok(err instanceof EmbeddedPostgresError)
    t.match((err as Error).message, `who cannot enter ${closed}; set EMBEDDED_POSTGRES_DIR`)
  })

  t.test('the server exits while starting: its own words are in the message', async (t) => {
    const s = await settings(t)
    await (await startEmbeddedPostgres(s, log)).stop()
    // A setting PostgreSQL refuses at start.
    writeFileSync(path.join(s.dataDir, 'postgresql.auto.conf'), 'shared_buffers = nonsense\n')
    const err = await startEmbeddedPostgres(s, log).catch((e: unknown) => e)
    t.ok(err instanceof EmbeddedPostgresError)
    t.match((err as Error).message, /exited while starting \(code 1, .*shared_buffers/)
    t.notMatch((err as Error).message, /undefined/)
  })
})
