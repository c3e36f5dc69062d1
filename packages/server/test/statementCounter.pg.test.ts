import { assert, describe, it } from "@effect/vitest"
import { Context, Effect, Metric, Schema } from "effect"
import { sql } from "slonik"
import { migrate } from "../src/db/migrate.ts"
import { makePool } from "../src/db/pool.ts"
import {
  countersLine,
  makeStatementCounter,
  type StatementCounts,
  statementCounts,
  statementKey,
} from "../src/db/statementCounter.ts"
import { freshDatabase } from "./support/database.ts"

const NoRow = Schema.toStandardSchemaV1(Schema.Struct({}))

/** What was counted between two readings, by key (keys counted 0 times left out). */
const delta = (before: StatementCounts, after: StatementCounts) => {
  const byStatement: Record<string, number> = {}
  for (const [key, n] of Object.entries(after.byStatement)) {
    const d = n - (before.byStatement[key] ?? 0)
    if (d !== 0) byStatement[key] = d
  }
  return {
    statements: after.statements - before.statements,
    transactions: after.transactions - before.transactions,
    byStatement,
  }
}

describe("statementKey", () => {
  it("names a statement by what it does, or by its slonik name", () => {
    assert.strictEqual(
      statementKey({ sql: "insert into peers (peer_id) values ($1) on conflict do nothing" }),
      "insert peers",
    )
    assert.strictEqual(
      statementKey({
        sql: "insert into server_instances (server_id) values ($1)\n on conflict (server_id) do update set alive_at = now()",
      }),
      "insert server_instances",
    )
    assert.strictEqual(
      statementKey({ sql: "UPDATE  tickets SET state = $1 WHERE ticket = $2" }),
      "update tickets",
    )
    assert.strictEqual(
      statementKey({
        sql: `with input as (select * from unnest($1::int4[]) as v(ord)), held as (
          select s.session_id from sessions s for update), ins as (insert into job_results select 1)
          update tickets t set state = 'x' from input returning 1`,
      }),
      "with input: insert job_results, update tickets",
    )
    assert.strictEqual(
      statementKey({ sql: "select session_id::text from sessions where peer_id = $1 for no key update" }),
      "select from sessions",
    )
    assert.strictEqual(
      statementKey({ sql: "select greatest(0, extract(epoch from now() - alive_at)) from server_instances" }),
      "select from server_instances",
    )
    assert.strictEqual(
      statementKey({ sql: "select pg_advisory_xact_lock($1)" }),
      "select pg_advisory_xact_lock",
    )
    assert.strictEqual(statementKey({ sql: "delete from redis_users where name = $1" }), "delete redis_users")
    assert.strictEqual(
      statementKey({ name: "record-results", sql: "with input as (select 1)" }),
      "record-results",
    )
  })
})

describe("the statement counter of every pool", () => {
  it.effect(
    "counts statements by key and explicit transactions, committed or rolled back",
    () =>
      Effect.gen(function* () {
        const db = yield* Effect.acquireRelease(
          Effect.promise(() => freshDatabase()),
          (db) => Effect.promise(() => db.drop()),
        )
        // Besides the counter every pool has (into the process's registry, which whatever else
        // runs in this process may add to), one into a registry of this test's own: exact counts.
        const registry = new Map()
        const own = <A, E>(effect: Effect.Effect<A, E>) =>
          effect.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const pool = yield* makePool(db.url, {
          maxPoolSize: 2,
          interceptors: [makeStatementCounter(Context.make(Metric.MetricRegistry, registry))],
        })
        const run = <A>(f: () => Promise<A>) => Effect.promise(f)

        const beforeMigration = yield* own(statementCounts)
        yield* migrate(pool)
        const migrated = delta(beforeMigration, yield* own(statementCounts))
        assert.isAbove(migrated.statements, 0)
        assert.isAbove(migrated.transactions, 0)

        const before = yield* own(statementCounts)
        const globalBefore = yield* statementCounts
        yield* run(() => pool.query(sql.type(NoRow)`select 1`))
        yield* run(() => pool.query(sql.type(NoRow)`insert into peers (peer_id) values ('p1')`))
        yield* run(() =>
          pool.transaction(async (tx) => {
            await tx.query(sql.type(NoRow)`update peers set os = 'linux' where peer_id = 'p1'`)
            await tx.query(sql.type(NoRow)`update peers set distro = 'debian' where peer_id = 'p1'`)
          }),
        )
        // A second transaction right after on the same connection is a transaction of its own.
        yield* run(() =>
          pool.transaction(async (tx) => {
            await tx.query(sql.type(NoRow)`select 1`)
          }),
        )
        const failed = yield* Effect.exit(
          run(() =>
            pool.transaction(async (tx) => {
              await tx.query(sql.type(NoRow)`insert into peers (peer_id) values ('p2')`)
              throw new Error("roll back")
            }),
          ),
        )
        assert.isTrue(failed._tag === "Failure")
        // A statement PostgreSQL refuses was still sent.
        yield* Effect.exit(run(() => pool.query(sql.type(NoRow)`select * from no_such_table`)))

        const counted = delta(before, yield* own(statementCounts))
        assert.deepStrictEqual(counted, {
          statements: 7,
          transactions: 3,
          byStatement: {
            select: 2,
            "insert peers": 2,
            "update peers": 2,
            "select from no_such_table": 1,
          },
        })

        // makePool's own counter saw them too.
        const global = delta(globalBefore, yield* statementCounts)
        assert.isAtLeast(global.statements, 7)
        assert.isAtLeast(global.transactions, 3)
        assert.isAtLeast(global.byStatement["update peers"] ?? 0, 2)

        // The line the server prints on SIGUSR2 carries the same counts.
        const line = yield* own(countersLine)
        const now = yield* own(statementCounts)
        assert.isTrue(line.startsWith("picus-counters {"))
        assert.deepStrictEqual(JSON.parse(line.slice("picus-counters ".length)), { pg: now })
      }).pipe(Effect.scoped),
    60_000,
  )
})
