/**
 * `npm start` (launcher/main.ts) with servers of your own: it migrates, runs
 * the API and a worker, stops both on SIGTERM, and stops everything with
 * exit 1 when one of them dies. Started with tap's loaders (not tsx), so its
 * coverage counts; test/deploy/zero-install.test.ts runs the real
 * `npm start` with nothing installed.
 */
import { spawn } from 'node:child_process'
import t from 'tap'
import { listMigrations } from '../../migrations/migrate'
import { ADMIN_DATABASE_URL, createTestEnvironment, eachQueueBackend, randomSuffix } from '../support/environment'
import { freePort } from '../support/free-port'
import { callJson } from '../support/load'
import { coverageEnv, nodeArgs, ROOT } from '../support/processes'
import { TEST_USER } from '../support/app'
import { sleep } from '../support/wait'

eachQueueBackend(t, 'the launcher migrates, serves, and stops the API and the worker on SIGTERM', async (t, backendEnv) => {
  const environment = await createTestEnvironment(t, backendEnv)
  // A database that does not exist yet: the launcher creates and migrates it.
  const database = `tickets_launch_${randomSuffix()}`
  const databaseUrl = new URL(ADMIN_DATABASE_URL)
  databaseUrl.pathname = `/${database}`
  t.teardown(async () => { await environment.sql.query(`drop database if exists ${database} with (force)`) })
  const port = await freePort()
  const output: string[] = []
  const child = spawn(process.execPath, [...nodeArgs(), 'launcher/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...coverageEnv(), ...environment.env, DATABASE_URL: databaseUrl.toString(), PORT: String(port), LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  for (const stream of [child.stdout, child.stderr]) stream.on('data', (chunk: Buffer) => { output.push(chunk.toString()) })
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  t.teardown(() => { child.kill('SIGKILL') })
  const url = `http://127.0.0.1:${port}`
  for (let i = 0; ; i++) {
    try {
      if ((await callJson(url, 'GET', '/health/ready')).status === 200 && output.join('').includes('worker started')) break
    } catch {}
    if (i > 300) throw new Error(`not ready:\n${output.join('')}`)
    await sleep(100)
  }
  t.notMatch(output.join(''), /started the embedded PostgreSQL/, 'DATABASE_URL set: nothing embedded')
  t.match(output.join(''), /"msg":"database created"/)
  t.match(output.join(''), `"applied":${(await listMigrations()).length},"msg":"migrations done"`, 'every migration, on a new database')
  const option = (await callJson(url, 'POST', '/ticket_options', { name: 'launched', allocation: 2 })).body.id as string
  t.equal((await callJson(url, 'POST', `/ticket_options/${option}/purchases`, { quantity: 2, user_id: TEST_USER })).status, 201)
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'exit 0 after a clean stop')
  const log = output.join('')
  t.match(log, /"msg":"api closing"/)
  t.match(log, /"msg":"worker closed"/)
  t.match(log, /"exitCode":0,"msg":"stopped"/)
})

t.test('the launcher stops everything and exits 1 when the API or the worker dies', async (t) => {
  const environment = await createTestEnvironment(t)
  const output: string[] = []
  const child = spawn(process.execPath, [...nodeArgs(), 'launcher/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...coverageEnv(), ...environment.env, PORT: String(await freePort()), LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  for (const stream of [child.stdout, child.stderr]) stream.on('data', (chunk: Buffer) => { output.push(chunk.toString()) })
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  t.teardown(() => { child.kill('SIGKILL') })
  let workerPid: number | undefined
  for (let i = 0; workerPid === undefined; i++) {
    const started = /\{[^\n]*"name":"worker"[^\n]*"msg":"worker started"\}/.exec(output.join(''))
    // Both up: the API has its SIGTERM handler by the time it listens.
    if (started !== null && output.join('').includes('Server listening')) workerPid = (JSON.parse(started[0]) as { pid: number }).pid
    if (i > 300) throw new Error(`the worker did not start:\n${output.join('')}`)
    await sleep(100)
  }
  process.kill(workerPid, 'SIGKILL')
  t.equal(await exited, 1, 'exit 1')
  t.match(output.join(''), /worker exited; stopping/)
  t.match(output.join(''), /"msg":"api closing"/, 'the API was stopped too')
})

t.test('the launcher exits 1, saying why, when it cannot migrate', async (t) => {
  const environment = await createTestEnvironment(t)
  const child = spawn(process.execPath, [...nodeArgs(), 'launcher/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...coverageEnv(), ...environment.env, DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/tickets`, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  for (const stream of [child.stdout, child.stderr]) stream.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const code = await new Promise<number | null>((resolve) => { child.once('exit', (c) => { resolve(c) }) })
  t.equal(code, 1)
  t.match(output, /"msg":"migration failed"/)
  t.match(output, /ECONNREFUSED/)
})
