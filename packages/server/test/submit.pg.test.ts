import { randomUUID } from "node:crypto"
import { assert, layer } from "@effect/vitest"
import { Protocol, Store, type SubmittedJob, TransportMemory } from "@picus/core"
import { Context, Effect, Layer, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { migrate } from "../src/db/migrate.ts"
import { layerPg } from "../src/db/PgStore.ts"
import { makePool } from "../src/db/pool.ts"
import { InvalidJob, submitJobs } from "../src/submit.ts"
import { freshDatabase } from "./support/database.ts"

class Db extends Context.Service<Db, { readonly pool: DatabasePool }>()("test/SubmitDb") {}

const dbLayer = Layer.effect(
  Db,
  Effect.gen(function* () {
    const db = yield* Effect.acquireRelease(
      Effect.promise(() => freshDatabase()),
      (db) => Effect.promise(() => db.drop()),
    )
    const pool = yield* makePool(db.url)
    yield* migrate(pool)
    return { pool }
  }),
)
const services = Layer.mergeAll(
  Layer.unwrap(Effect.map(Db, ({ pool }) => layerPg(pool))),
  TransportMemory.layerMemory,
).pipe(Layer.provideMerge(dbLayer))

const CountRow = Schema.toStandardSchemaV1(Schema.Struct({ n: Schema.Int }))
const ticketCount = Effect.gen(function* () {
  const { pool } = yield* Db
  return yield* Effect.promise(() =>
    pool.oneFirst(sql.type(CountRow)`select count(*)::int as n from tickets`),
  )
})

const ok: SubmittedJob = { name: "adhoc", command: "uptime", timeoutMs: 30_000 }

layer(services, { timeout: 60_000 })("submitJobs refuses what the wire cannot carry", (it) => {
  it.effect("an invalid job fails with InvalidJob naming the field and the limit, and writes nothing", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const peerId = "peer-submit"
      yield* store.login({
        peerId,
        sessionId: randomUUID(),
        serverId: "test",
        serverIp: null,
        os: "linux",
        distro: "debian",
        hostname: null,
        agentVersion: null,
        leaseMs: 60_000,
      })
      const cases: ReadonlyArray<readonly [string, ReadonlyArray<SubmittedJob>, string, string]> = [
        ["empty command", [{ ...ok, command: "" }], "command", "command: expected a non-empty string"],
        [
          "9 KiB command",
          [{ ...ok, command: "x".repeat(9 * 1024) }],
          "command",
          `command: expected at most ${Protocol.MAX_COMMAND_BYTES} UTF-8 bytes, got 9216`,
        ],
        ["NUL in command", [{ ...ok, command: "a\u0000b" }], "command", "command: expected no U+0000"],
        [
          "long name",
          [{ ...ok, name: "n".repeat(Protocol.MAX_LABEL_LENGTH + 1) }],
          "name",
          `name: expected at most ${Protocol.MAX_LABEL_LENGTH} code points, got 257`,
        ],
        [
          "zero timeout",
          [{ ...ok, timeoutMs: 0 }],
          "timeout_ms",
          "timeout_ms: expected an integer from 1 to 2147483647, got 0",
        ],
        [
          "timeout past int32",
          [{ ...ok, timeoutMs: 2 ** 31 }],
          "timeout_ms",
          "timeout_ms: expected an integer from 1 to 2147483647, got 2147483648",
        ],
        ["fractional timeout", [{ ...ok, timeoutMs: 1.5 }], "timeout_ms", "timeout_ms: expected an integer"],
        // One bad job refuses the whole submission: the good one before it is not written either.
        [
          "second job bad",
          [ok, { ...ok, command: "" }],
          "command",
          "job 1: command: expected a non-empty string",
        ],
      ]
      for (const [what, jobs, field, message] of cases) {
        const error = yield* Effect.flip(submitJobs({ peerId, jobs, submittedBy: "test" }))
        assert.instanceOf(error, InvalidJob, what)
        assert.strictEqual(error._tag, "InvalidJob")
        assert.strictEqual(error.field, field, what)
        assert.include(error.message, message, what)
        assert.strictEqual(yield* ticketCount, 0, what)
      }
      const badPeer = yield* Effect.flip(submitJobs({ peerId: "", jobs: [ok], submittedBy: "test" }))
      assert.instanceOf(badPeer, InvalidJob)
      assert.strictEqual(badPeer.field, "peer_id")
      // The same peer and job, valid: written, so the refusals above were the validation's.
      const { tickets } = yield* submitJobs({ peerId, jobs: [ok], submittedBy: "test" })
      assert.strictEqual(tickets.length, 1)
      assert.strictEqual(yield* ticketCount, 1)
    }),
  )

  it.effect("a store failure is a StoreError, told apart from InvalidJob", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(submitJobs({ peerId: "nobody", jobs: [ok], submittedBy: "test" }))
      assert.strictEqual(error._tag, "StoreError")
    }),
  )
})
