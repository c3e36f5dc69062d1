import { hostname } from "node:os"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { makeLogging, resolveLogging, UsageError } from "../src/index.ts"

/** What `run` writes to stdout, line by line (the JSON logger writes there, as pino does). */
const captured = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function* () {
    const lines: Array<string> = []
    const write = process.stdout.write
    process.stdout.write = ((chunk: string) => {
      lines.push(
        ...String(chunk)
          .split("\n")
          .filter((l) => l !== ""),
      )
      return true
    }) as typeof process.stdout.write
    yield* effect.pipe(Effect.ensuring(Effect.sync(() => (process.stdout.write = write))))
    return lines.map((l) => JSON.parse(l) as Record<string, unknown>)
  })

describe("logging", () => {
  it.effect(
    "json: pino's fields, the clock's time, annotations and spans as fields, and the level kept",
    () =>
      Effect.gen(function* () {
        yield* TestClock.adjust("1234 millis")
        const logging = makeLogging({ level: "info", format: "json" })
        const lines = yield* captured(
          Effect.gen(function* () {
            yield* Effect.logDebug("not shown at info")
            yield* Effect.logInfo("registered", "as p-1")
            yield* Effect.logWarning("slow").pipe(Effect.annotateLogs({ peer_id: "p-1", pid: "not pino's" }))
            yield* Effect.logError("failed").pipe(Effect.withLogSpan("register"))
          }).pipe(Effect.provide(logging.layer)),
        )
        assert.deepStrictEqual(lines[0], {
          level: 30,
          time: 1234,
          pid: process.pid,
          hostname: hostname(),
          msg: "registered as p-1",
        })
        assert.strictEqual(lines.length, 3)
        // An annotation never replaces one of pino's own fields.
        assert.deepStrictEqual([lines[1]?.level, lines[1]?.peer_id, lines[1]?.pid], [40, "p-1", process.pid])
        assert.deepStrictEqual([lines[2]?.level, lines[2]?.register], [50, 0])
      }),
  )

  it.effect("say: below the level nothing, in json a JSON line", () =>
    Effect.gen(function* () {
      const logging = makeLogging({ level: "warn", format: "json" })
      const lines = yield* captured(
        Effect.sync(() => {
          logging.say("peer starting")
          logging.say("cannot reach Redis", { level: "warn" })
        }),
      )
      assert.deepStrictEqual(
        lines.map((l) => [l.level, l.msg]),
        [[40, "cannot reach Redis"]],
      )
    }),
  )

  it("flags win over the environment; a bad value names the flag and the variable", () => {
    assert.deepStrictEqual(resolveLogging({}, {}), { level: "info", format: "text" })
    assert.deepStrictEqual(
      resolveLogging({ logLevel: "debug" }, { PICUS_LOG_LEVEL: "error", PICUS_LOG_FORMAT: "json" }),
      { level: "debug", format: "json" },
    )
    assert.throws(
      () => resolveLogging({ logFormat: "xml" }, {}),
      UsageError,
      "--log-format (or PICUS_LOG_FORMAT)",
    )
  })
})
