import { cp, mkdtemp, readFile, rm, unlink, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { defaultSqlDir, MigrationError, migrate } from "../src/db/migrate.ts"
import { makePgStore } from "../src/db/PgStore.ts"
import { makePool, PoolError } from "../src/db/pool.ts"
import { freshDatabase } from "./support/database.ts"

const std = Schema.toStandardSchemaV1

/** A fresh database, dropped when the test's scope closes. */
const database = Effect.acquireRelease(
  Effect.promise(() => freshDatabase()),
  (db) => Effect.promise(() => db.drop()),
)

/** A copy of the repository's sql/ folder, removed when the test's scope closes. */
const sqlDirCopy = Effect.acquireRelease(
  Effect.promise(async () => {
    const dir = await mkdtemp(join(tmpdir(), "picus-sql-"))
    await cp(defaultSqlDir, dir, { recursive: true })
    return dir
  }),
  (dir) => Effect.promise(() => rm(dir, { recursive: true, force: true })),
)

const query = <A>(run: () => Promise<A>) => Effect.promise(run)

/** The repository's migrations, in order. Tests that add migrations to a copy number them after these. */
const REPO_MIGRATIONS = [
  "001_init.sql",
  "002_server_instances.sql",
  "003_session_leases.sql",
  "004_ticket_close_reason.sql",
  "005_redis_users.sql",
  "006_trust.sql",
  "007_counted_rejections.sql",
  "008_instance_leases.sql",
  "009_ticket_peer_key.sql",
  "010_runs.sql",
  "011_cancel.sql",
  "012_retention.sql",
  "013_operator_tokens.sql",
]

const TableRow = std(Schema.Struct({ table_name: Schema.String, table_type: Schema.String }))
const tables = (pool: DatabasePool) =>
  query(() =>
    pool.any(sql.type(TableRow)`
      select table_name, table_type from information_schema.tables
      where table_schema = 'public' order by table_name
    `),
  )

const AppliedRow = std(Schema.Struct({ version: Schema.Int, name: Schema.String, checksum: Schema.String }))
const applied = (pool: DatabasePool) =>
  query(() =>
    pool.any(sql.type(AppliedRow)`select version, name, checksum from schema_migrations order by version`),
  )

const SchemaRow = std(Schema.Struct({ item: Schema.String }))
/** Every column, index, constraint and view definition of the public schema, as text. */
const schemaSnapshot = (pool: DatabasePool) =>
  query(() =>
    pool.anyFirst(sql.type(SchemaRow)`
      select item from (
        select format('column %s.%s %s null=%s default=%s', table_name, column_name, data_type, is_nullable,
          column_default) as item
        from information_schema.columns where table_schema = 'public'
        union all
        select format('index %s %s', indexname, indexdef) from pg_indexes where schemaname = 'public'
        union all
        select format('constraint %s %s', conname, pg_get_constraintdef(oid)) from pg_constraint
        where connamespace = 'public'::regnamespace
        union all
        select format('view %s %s', viewname, definition) from pg_views where schemaname = 'public'
      ) s order by item
    `),
  )

describe("migrate", () => {
  it.live(
    "creates every table of the repository's migrations and the peer_sessions view, and records each",
    () =>
      Effect.gen(function* () {
        const db = yield* database
        const pool = yield* makePool(db.url)
        const result = yield* migrate(pool)
        assert.deepStrictEqual(result.applied, REPO_MIGRATIONS)
        const found = yield* tables(pool)
        const byName = new Map(found.map((t) => [t.table_name, t.table_type]))
        for (const table of [
          "peers",
          "tokens",
          "jobs",
          "tickets",
          "job_results",
          "registration_log",
          "server_instances",
          "sessions",
          "redis_users",
          "schema_migrations",
        ]) {
          assert.strictEqual(byName.get(table), "BASE TABLE", table)
        }
        assert.strictEqual(byName.get("peer_sessions"), "VIEW")
        const rows = yield* applied(pool)
        assert.deepStrictEqual(
          rows.map((r) => [r.version, r.name]),
          REPO_MIGRATIONS.map((name) => [Number(name.slice(0, 3)), name]),
        )
        for (const row of rows) assert.match(row.checksum, /^[0-9a-f]{64}$/)
      }),
  )

  it.live("is idempotent: a second run applies nothing and changes nothing", () =>
    Effect.gen(function* () {
      const db = yield* database
      const pool = yield* makePool(db.url)
      yield* migrate(pool)
      const before = yield* schemaSnapshot(pool)
      const rowsBefore = yield* applied(pool)
      const again = yield* migrate(pool)
      assert.deepStrictEqual(again.applied, [])
      assert.deepStrictEqual(yield* schemaSnapshot(pool), before)
      assert.deepStrictEqual(yield* applied(pool), rowsBefore)
      assert.isAbove(before.length, 20)
    }),
  )

  it.live("two migrators at once both succeed, and each migration is applied exactly once", () =>
    Effect.gen(function* () {
      const db = yield* database
      const dir = yield* sqlDirCopy
      // A slow second migration keeps the first migrator inside its transaction while the other waits.
      yield* query(() =>
        writeFile(join(dir, "900_slow.sql"), "select pg_sleep(0.3);\ncreate table slow (x int);\n"),
      )
      const a = yield* makePool(db.url)
      const b = yield* makePool(db.url)
      const [ra, rb] = yield* Effect.all([migrate(a, { dir }), migrate(b, { dir })], {
        concurrency: "unbounded",
      })
      const all = [...ra.applied, ...rb.applied].sort()
      assert.deepStrictEqual(all, [...REPO_MIGRATIONS, "900_slow.sql"])
      assert.isTrue(ra.applied.length === 0 || rb.applied.length === 0, "one migrator applied everything")
      assert.deepStrictEqual(
        (yield* applied(a)).map((r) => r.version),
        [...REPO_MIGRATIONS.map((name) => Number(name.slice(0, 3))), 900],
      )
    }),
  )

  it.live("applies everything or nothing: a failing migration rolls back the whole run", () =>
    Effect.gen(function* () {
      const db = yield* database
      const dir = yield* sqlDirCopy
      yield* query(() =>
        writeFile(join(dir, "900_broken.sql"), "create table fine (x int);\nselect * from nope;\n"),
      )
      const pool = yield* makePool(db.url)
      const error = yield* Effect.flip(migrate(pool, { dir }))
      assert.instanceOf(error, MigrationError)
      assert.include(error.message, "900_broken.sql")
      assert.include(error.message, "nope")
      const found = yield* tables(pool)
      assert.deepStrictEqual(found, [], "nothing of any migration remains, not even schema_migrations")
    }),
  )

  it.live("refuses to run when an applied migration's file changed, naming the file", () =>
    Effect.gen(function* () {
      const db = yield* database
      const dir = yield* sqlDirCopy
      const pool = yield* makePool(db.url)
      yield* migrate(pool, { dir })
      yield* query(() =>
        writeFile(join(dir, "001_init.sql"), "create table changed (x int);\n", { flag: "a" }),
      )
      yield* query(() => writeFile(join(dir, "901_next.sql"), "create table next (x int);\n"))
      const error = yield* Effect.flip(migrate(pool, { dir }))
      assert.instanceOf(error, MigrationError)
      assert.include(error.message, "001_init.sql")
      assert.include(error.message, "changed")
      const names = (yield* tables(pool)).map((t) => t.table_name)
      assert.notInclude(names, "next", "nothing is applied after a refusal")
    }),
  )

  it.live("refuses to run when an applied migration's file is missing", () =>
    Effect.gen(function* () {
      const db = yield* database
      const dir = yield* sqlDirCopy
      const pool = yield* makePool(db.url)
      yield* migrate(pool, { dir })
      yield* query(() => unlink(join(dir, "001_init.sql")))
      const error = yield* Effect.flip(migrate(pool, { dir }))
      assert.instanceOf(error, MigrationError)
      assert.include(error.message, "001_init.sql")
      assert.include(error.message, "missing")
    }),
  )

  it.live("refuses a new migration numbered below an applied one", () =>
    Effect.gen(function* () {
      const db = yield* database
      const dir = yield* sqlDirCopy
      yield* query(() => writeFile(join(dir, "903_later.sql"), "create table later (x int);\n"))
      const pool = yield* makePool(db.url)
      yield* migrate(pool, { dir })
      yield* query(() => writeFile(join(dir, "902_between.sql"), "create table between_ (x int);\n"))
      const error = yield* Effect.flip(migrate(pool, { dir }))
      assert.include(error.message, "902_between.sql")
    }),
  )

  it.live("an unreachable database is an error, not a hang", () =>
    Effect.gen(function* () {
      const started = Date.now()
      const exit = yield* Effect.exit(
        Effect.scoped(
          Effect.gen(function* () {
            const pool = yield* makePool("postgres://postgres:s3cret-pw@127.0.0.1:1/postgres", {
              connectionTimeoutMs: 2_000,
            })
            return yield* migrate(pool)
          }),
        ),
      )
      assert.isTrue(Exit.isFailure(exit))
      const error = yield* Effect.flip(
        Effect.scoped(
          makePool("postgres://postgres:s3cret-pw@127.0.0.1:1/postgres", { connectionTimeoutMs: 2_000 }),
        ),
      )
      assert.instanceOf(error, PoolError)
      assert.notInclude(error.message, "s3cret-pw")
      assert.isBelow(Date.now() - started, 10_000)
    }),
  )

  it.live("an unreadable migrations folder is a MigrationError", () =>
    Effect.gen(function* () {
      const db = yield* database
      const pool = yield* makePool(db.url)
      const error = yield* Effect.flip(migrate(pool, { dir: join(tmpdir(), "picus-no-such-dir") }))
      assert.instanceOf(error, MigrationError)
      assert.include(error.message, "picus-no-such-dir")
    }),
  )

  it.live(
    "008: open sessions stay held, their owner's row carries the lease, and tickets keep their state",
    () =>
      Effect.gen(function* () {
        const db = yield* database
        const dir = yield* sqlDirCopy
        const leases = "008_instance_leases.sql"
        // It and the migrations after it wait: the database is as 007 left it.
        const waiting = REPO_MIGRATIONS.filter((name) => name >= leases)
        const texts = new Map<string, string>()
        for (const name of waiting) {
          texts.set(name, yield* query(() => readFile(join(dir, name), "utf8")))
          yield* query(() => unlink(join(dir, name)))
        }
        const pool = yield* makePool(db.url)
        yield* migrate(pool, { dir })
        // As 007 left them: per-session leases, one live instance, one lost, one never seen.
        for (const statement of [
          sql.unsafe`insert into server_instances (server_id, alive_at) values ('live', now()), ('gone', now() - interval '1 hour')`,
          sql.unsafe`insert into peers (peer_id) values ('p1'), ('p2'), ('p3'), ('p4')`,
          sql.unsafe`insert into sessions (session_id, peer_id, owner_id, lease_until, closed_at) values
            ('00000000-0000-4000-8000-000000000001', 'p1', 'live', now() + interval '10 minutes', null),
            ('00000000-0000-4000-8000-000000000002', 'p2', 'live', now() + interval '5 minutes', null),
            ('00000000-0000-4000-8000-000000000003', 'p3', 'gone', now() - interval '50 minutes', null),
            ('00000000-0000-4000-8000-000000000004', 'p4', 'unseen', now() + interval '10 minutes', null)`,
          sql.unsafe`insert into tickets (peer_id, session_id, job_name, os, distro, command, timeout_ms, server_id, state, finished_at)
            values
            ('p1', '00000000-0000-4000-8000-000000000001', 'a', 'l', 'd', 'true', 1000, 'live', 'delivered', null),
            ('p1', '00000000-0000-4000-8000-000000000001', 'b', 'l', 'd', 'true', 1000, 'live', 'cancelled', null)`,
        ]) {
          yield* query(() => pool.query(statement))
        }
        for (const [name, text] of texts) yield* query(() => writeFile(join(dir, name), text))
        assert.deepStrictEqual((yield* migrate(pool, { dir })).applied, waiting)

        const LeaseRow = std(Schema.Struct({ server_id: Schema.String, minutes: Schema.Number }))
        const rows = yield* query(() =>
          pool.any(sql.type(LeaseRow)`
          select server_id, round(extract(epoch from lease_until - now()) / 60)::float8 as minutes
          from server_instances order by server_id
        `),
        )
        assert.deepStrictEqual(
          rows.map((r) => [r.server_id, r.minutes]),
          [
            ["gone", -50],
            ["live", 10],
            ["unseen", 10],
          ],
          "each owner's longest lease",
        )
        const store = makePgStore(pool)
        const expired = (peerId: string) =>
          store.sessionOf(peerId).pipe(Effect.map((o) => (o._tag === "Some" ? o.value.expired : undefined)))
        assert.deepStrictEqual(yield* Effect.forEach(["p1", "p2", "p3", "p4"], expired), [
          false,
          false,
          true,
          false,
        ])
        const held = yield* store.renewLease({
          serverId: "live",
          leaseMs: 60_000,
          sessions: [
            { sessionId: "00000000-0000-4000-8000-000000000001", epoch: 1 },
            { sessionId: "00000000-0000-4000-8000-000000000002", epoch: 1 },
          ],
        })
        assert.strictEqual(held.length, 2, "the live instance's next renewal carries its sessions on")
        const TicketRow = std(
          Schema.Struct({ job_name: Schema.String, state: Schema.String, finished: Schema.Boolean }),
        )
        assert.deepStrictEqual(
          yield* query(() =>
            pool.any(
              sql.type(
                TicketRow,
              )`select job_name, state, finished_at is not null as finished from tickets order by job_name`,
            ),
          ),
          [
            { job_name: "a", state: "delivered", finished: false },
            { job_name: "b", state: "cancelled", finished: true },
          ],
        )
      }),
  )
})
