import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Protocol } from "@picus/core"
import { Effect, Schema } from "effect"
import { execute } from "../src/executor.ts"
import { shellWays } from "./support/shellWays.ts"

const base = { timeoutMs: 5_000, outputCapBytes: 1_024 }

describe.each(shellWays)("executor (real shell, $name)", (way) => {
  const withLauncher = Effect.promise(() => way.launcher())
  const optionsOf = Effect.map(withLauncher, (launcher) => ({
    ...base,
    ...(launcher === undefined ? {} : { launcher }),
  }))

  it.live("starts the shell the way it says: its parent is the peer, or a launcher", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
      const run = yield* execute("echo $PPID", options)
      const parent = Number(run.output.trim())
      if (options.launcher === undefined) assert.strictEqual(parent, process.pid)
      else {
        assert.notStrictEqual(parent, process.pid)
        assert.strictEqual(readFileSync(`/proc/${parent}/stat`, "utf8").split(" ")[3], String(process.pid))
      }
    }),
  )

  it.live("runs the command as `sh -c` does: $0 the shell, no arguments, no variable of the launcher", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
      const run = yield* execute(
        `echo "$0|$#|\${__picus_c-unset}|\${c-unset}|\${id-unset}|\${n-unset}"`,
        options,
      )
      assert.strictEqual(run.output, "/bin/sh|0|unset|unset|unset|unset\n")
    }),
  )

  it.live("a command of several lines, and one that replaces its shell, keep their exit codes", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
      const lines = yield* execute(
        "a='x y'\nif [ \"$a\" = 'x y' ]; then\n  echo \"$a\"\nfi\nexit 3\n",
        options,
      )
      assert.strictEqual(lines.output, "x y\n")
      assert.strictEqual(lines.exitCode, 3)
      const replaced = yield* execute("exec sh -c 'exit 5'", options)
      assert.strictEqual(replaced.exitCode, 5)
    }),
  )

  it.live("captures stdout and stderr and the exit code", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
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
      const options = yield* optionsOf
      const run = yield* execute("printf 'a\\000b'", options)
      assert.strictEqual(run.output, "a\uFFFDb")
      assert.isTrue(Schema.is(Protocol.ResultText)(run.output))
    }),
  )

  it.live("cuts the output at the cap and says so", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
      const run = yield* execute("head -c 5000 /dev/zero | tr '\\0' a", options)
      assert.strictEqual(run.output.length, 1_024)
      assert.isTrue(run.truncated)
      assert.strictEqual(run.exitCode, 0)
    }),
  )

  it.live("kills the whole process group on timeout", () =>
    Effect.gen(function* () {
      const options = yield* optionsOf
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
      const options = yield* optionsOf
      const run = yield* execute("true", { ...options, shell: "/no/such/shell" })
      assert.isNull(run.exitCode)
      assert.include(run.output, "failed to start")
    }),
  )
})
