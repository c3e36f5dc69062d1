import { randomInt } from "node:crypto"
import { readdirSync, readFileSync } from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import { eventually } from "@picus/core/testing"
import { Effect, Fiber } from "effect"
import { execute } from "../src/executor.ts"
import { makeLiveOutput } from "../src/liveOutput.ts"

/** Live `sleep` processes given `marker` as their argument (zombies left out). */
const processesWith = (marker: string): number => {
  let count = 0
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8")
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8")
      const [program, argument] = cmdline.split("\u0000")
      if (program?.endsWith("sleep") && argument === marker && !/\) Z /.test(stat)) count++
    } catch {
      // Gone meanwhile.
    }
  }
  return count
}

/** A `sleep` argument no other test uses, so its processes can be counted. */
const uniqueSleep = () => `30.${randomInt(1e9, 1e10 - 1)}`

const options = { timeoutMs: 60_000, outputCapBytes: 64 * 1024 }

describe("cancel (real shell)", () => {
  it.live("kills the whole process group: `sleep 30 & sleep 30` leaves no sleep behind", () =>
    Effect.gen(function* () {
      const seconds = uniqueSleep()
      const controller = new AbortController()
      const fiber = yield* execute(`echo started; sleep ${seconds} & sleep ${seconds}`, {
        ...options,
        cancel: controller.signal,
      }).pipe(Effect.forkChild)
      yield* eventually(
        Effect.sync(() => (processesWith(seconds) === 2 ? true : undefined)),
        "both sleeps running",
      )
      controller.abort()
      const run = yield* Fiber.join(fiber)
      assert.isTrue(run.cancelled)
      assert.isFalse(run.timedOut)
      assert.isNull(run.exitCode)
      assert.strictEqual(run.output, "started\n", "the output so far is kept")
      yield* eventually(
        Effect.sync(() => (processesWith(seconds) === 0 ? true : undefined)),
        "no sleep left behind",
        { timeoutMs: 5_000 },
      )
    }),
  )

  it.live("a command that ignores SIGTERM is killed after the grace", () =>
    Effect.gen(function* () {
      const seconds = uniqueSleep()
      const controller = new AbortController()
      const fiber = yield* execute(`trap '' TERM; sleep ${seconds} & sleep ${seconds}; echo survived`, {
        ...options,
        cancel: controller.signal,
        killGraceMs: 100,
      }).pipe(Effect.forkChild)
      yield* eventually(
        Effect.sync(() => (processesWith(seconds) === 2 ? true : undefined)),
        "both sleeps running",
      )
      controller.abort()
      const run = yield* Fiber.join(fiber)
      assert.isTrue(run.cancelled)
      assert.notInclude(run.output, "survived")
      yield* eventually(
        Effect.sync(() => (processesWith(seconds) === 0 ? true : undefined)),
        "no sleep left behind",
        { timeoutMs: 5_000 },
      )
    }),
  )

  it.live("a command that finishes first is not cancelled", () =>
    Effect.gen(function* () {
      const controller = new AbortController()
      const run = yield* execute("echo done", { ...options, cancel: controller.signal })
      controller.abort()
      assert.isFalse(run.cancelled)
      assert.strictEqual(run.exitCode, 0)
    }),
  )
})

describe("live output", () => {
  it("coalesces what comes between takes, one chunk per stream, at most a chunk's worth", () => {
    const live = makeLiveOutput({ capBytes: 1_000, maxChunkBytes: 10 })
    live.push("stdout", Buffer.from("hello "))
    live.push("stderr", Buffer.from("oops"))
    live.push("stdout", Buffer.from("world, this is long"))
    assert.deepStrictEqual(live.take(), { seq: 0, stream: "stdout", data: "hello worl", dropped: 15 })
    assert.deepStrictEqual(live.take(), { seq: 1, stream: "stderr", data: "oops", dropped: 0 })
    assert.isUndefined(live.take())
    assert.strictEqual(live.taken(), 2)
  })

  it("never more in all than the cap; says what it dropped", () => {
    const live = makeLiveOutput({ capBytes: 12, maxChunkBytes: 10 })
    live.push("stdout", Buffer.from("0123456789"))
    assert.strictEqual(live.take()?.data, "0123456789")
    live.push("stdout", Buffer.from("abcdef"))
    assert.deepStrictEqual(live.take(), { seq: 1, stream: "stdout", data: "ab", dropped: 4 })
    live.push("stdout", Buffer.from("more"))
    assert.isUndefined(live.take(), "the cap is reached")
    live.push("stderr", Buffer.from("x"))
    assert.isUndefined(live.take())
    live.push("stdout", Buffer.from(""))
    assert.isUndefined(live.take(), "what was dropped is told with the next chunk, if any")
  })

  it("holds back a character split between two pushes, and sends no NUL", () => {
    const live = makeLiveOutput({ capBytes: 100 })
    const euro = Buffer.from("€")
    live.push("stdout", Buffer.concat([Buffer.from("a\u0000"), euro.subarray(0, 2)]))
    assert.strictEqual(live.take()?.data, "a\uFFFD")
    live.push("stdout", euro.subarray(2))
    assert.strictEqual(live.take()?.data, "€")
  })
})
