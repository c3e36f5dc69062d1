import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Protocol } from "@picus/core"
import { Effect, Schema } from "effect"
import { execute } from "../src/executor.ts"

const options = { timeoutMs: 5_000, outputCapBytes: 1_024 }

describe("executor (real shell)", () => {
  it.live("captures stdout and stderr and the exit code", () =>
    Effect.gen(function* () {
      const run = yield* execute("echo out; echo err >&2; exit 7", options)
      assert.strictEqual(run.exitCode, 7)
      assert.include(run.output, "out\n")
      assert.include(run.output, "err\n")
      assert.isFalse(run.truncated)
      assert.isFalse(run.timedOut)
      assert.isAtLeast(run.finishedAt, run.startedAt)
    }),
  )

  it.live("sends a NUL byte of the output as U+FFFD: the wire carries no U+0000", () =>
    Effect.gen(function* () {
      const run = yield* execute("printf 'a\\000b'", options)
      assert.strictEqual(run.output, "a\uFFFDb")
      assert.isTrue(Schema.is(Protocol.ResultText)(run.output))
    }),
  )

  it.live("cuts the output at the cap and says so", () =>
    Effect.gen(function* () {
      const run = yield* execute("head -c 5000 /dev/zero | tr '\\0' a", options)
      assert.strictEqual(run.output.length, 1_024)
      assert.isTrue(run.truncated)
      assert.strictEqual(run.exitCode, 0)
    }),
  )

  it.live("kills the whole process group on timeout", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "picus-exec-"))
      const marker = join(dir, "survived")
      const started = Date.now()
      const run = yield* execute(`(sleep 1; touch ${marker}) & sleep 5`, { ...options, timeoutMs: 200 })
      assert.isTrue(run.timedOut)
      assert.isNull(run.exitCode)
      assert.isBelow(Date.now() - started, 2_000)
      yield* Effect.sleep("1500 millis")
      assert.isFalse(existsSync(marker), "the background child was killed with its group")
    }),
  )

  it.live("reports a command that cannot start", () =>
    Effect.gen(function* () {
      const run = yield* execute("true", { ...options, shell: "/no/such/shell" })
      assert.isNull(run.exitCode)
      assert.include(run.output, "failed to start")
    }),
  )
})
