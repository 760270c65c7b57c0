import t from 'tap'
import pg from 'pg'
import { listMigrations, migrate } from '../../migrations/migrate'
import { ADMIN_DATABASE_URL, randomSuffix, type Teardown } from '../support/environment'

async function emptyDatabase (t: Teardown): Promise<string> {
  const name = `tickets_migrate_${randomSuffix()}`
  const admin = new pg.Client({ connectionString: ADMIN_DATABASE_URL })
  await admin.connect()
  await admin.query(`create database ${name}`)
  await admin.end()
  t.teardown(async () => {
    const cleaner = new pg.Client({ connectionString: ADMIN_DATABASE_URL })
    await cleaner.connect()
    await cleaner.query(`drop database if exists ${name} with (force)`)
    await cleaner.end()
  })
  const url = new URL(ADMIN_DATABASE_URL)
  url.pathname = `/${name}`
  return url.toString()
}

t.test('files are numbered and each is applied once, recorded in schema_migrations', async (t) => {
  const files = await listMigrations()
  t.ok(files.length >= 1)
  t.same(files.map((f) => f.version), [...files.map((f) => f.version)].sort((a, b) => a - b))
  const url = await emptyDatabase(t)
  t.same(await migrate(url), files.map((f) => f.name))
  t.same(await migrate(url), [], 'a second run applies nothing')
  const db = new pg.Client({ connectionString: url })
  await db.connect()
  t.teardown(async () => { await db.end() })
  const { rows } = await db.query('select version from schema_migrations order by version')
  t.same(rows.map((r: { version: number }) => r.version), files.map((f) => f.version))
})

t.test('several runners at once apply each file exactly once', async (t) => {
  const url = await emptyDatabase(t)
  const results = await Promise.all(Array.from({ length: 5 }, async () => await migrate(url)))
  const applied = results.flat()
  t.same(applied.sort(), (await listMigrations()).map((f) => f.name).sort())
})

t.test('the schema enforces the invariants the service relies on', async (t) => {
  const url = await emptyDatabase(t)
  await migrate(url)
  const db = new pg.Client({ connectionString: url })
  await db.connect()
  t.teardown(async () => { await db.end() })
  const { rows: [option] } = await db.query("insert into ticket_options (name, initial_allocation, allocation) values ('x', 2, 2) returning id")
  await t.rejects(db.query('update ticket_options set allocation = -1 where id = $1', [option.id]), /check/i, 'allocation >= 0')
  await t.rejects(db.query('update ticket_options set allocation = 3 where id = $1', [option.id]), /check/i, 'never above the initial allocation')
  await t.rejects(db.query("insert into ticket_options (name, initial_allocation, allocation) values ('  ', 1, 1)"), /check/i, 'blank names')
  await t.rejects(db.query("insert into purchases (id, ticket_option_id, user_id, quantity, status) values (gen_random_uuid(), $1, gen_random_uuid(), 0, 'succeeded')", [option.id]), /check/i, 'quantity > 0')
  await t.rejects(db.query("insert into purchases (id, ticket_option_id, user_id, quantity, status) values (gen_random_uuid(), $1, gen_random_uuid(), 1, 'maybe')", [option.id]), /check/i, 'status')
  await t.rejects(db.query("insert into purchases (id, ticket_option_id, user_id, quantity, status) values (gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 1, 'succeeded')"), /foreign key/i, 'option must exist')
  await t.rejects(db.query('update ticket_options set held = -1 where id = $1', [option.id]), /check/i, 'held >= 0')
  await t.rejects(db.query('update ticket_options set held = 1 where id = $1', [option.id]), /check/i, 'available + held never above the initial allocation')
  await t.rejects(db.query("insert into reservations (id, ticket_option_id, user_id, quantity, status) values (gen_random_uuid(), $1, gen_random_uuid(), 1, 'held')", [option.id]), /check/i, 'a hold has an expiry')
  await t.rejects(db.query("insert into purchases (id, ticket_option_id, user_id, quantity, status, reason, cancelled_at) values (gen_random_uuid(), $1, gen_random_uuid(), 1, 'rejected', 'x', now())", [option.id]), /check/i, 'only a succeeded purchase is cancelled')
  const { rows: audit } = await db.query('select balanced from allocation_audit where id = $1', [option.id])
  t.same(audit, [{ balanced: true }])
  await db.query('update ticket_options set allocation = 1 where id = $1', [option.id])
  const { rows: broken } = await db.query('select balanced from allocation_audit where id = $1', [option.id])
  t.same(broken, [{ balanced: false }], 'the audit view catches an allocation that does not match its purchases')
})
