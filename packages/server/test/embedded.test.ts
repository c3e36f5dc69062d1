import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { sql } from "slonik"
import { EMBEDDED_POOL_OPTIONS, EMBEDDED_POOL_SIZE, serveEmbedded } from "../src/db/embedded.ts"
import { makePool, type PoolOptions } from "../src/db/pool.ts"

const One = Schema.toStandardSchemaV1(Schema.Struct({ n: Schema.Number }))

/** The same named statement from two connections to one embedded database, one after the other. */
const preparedTwice = (options: PoolOptions) =>
  Effect.scoped(
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "picus-embedded-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
      const url = yield* serveEmbedded(dir)
      const first = yield* makePool(url, options)
      const second = yield* makePool(url, options)
      const probe = (pool: typeof first) =>
        Effect.tryPromise(() => pool.one(sql.prepared("embedded probe", One)`select 1::int as n`))
      yield* probe(first)
      return yield* probe(second).pipe(Effect.result)
    }),
  )

describe("the embedded database (PGlite, one backend for every connection)", () => {
  it.live(
    "takes the same prepared statement from a second connection: no 'already exists', no result lost",
    () =>
      Effect.gen(function* () {
        // A plain pool names its hot statements: the second connection's prepare collides.
        const plain = yield* preparedTwice({ maxPoolSize: EMBEDDED_POOL_SIZE })
        assert.isTrue(plain._tag === "Failure", "a named statement collides across connections")
        if (plain._tag === "Failure") assert.include(String(plain.failure.cause), "already exists")
        const embedded = yield* preparedTwice(EMBEDDED_POOL_OPTIONS)
        assert.deepStrictEqual(embedded._tag === "Success" ? embedded.success : embedded, { n: 1 })
      }),
    60_000,
  )
})
