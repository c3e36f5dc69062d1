import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { makeRateLimitedLog } from "../src/gateway/RateLimitedLog.ts"

describe("rate-limited log of bad input", () => {
  it.effect("writes the first line of a kind, counts the rest, and sums them up in the next interval", () =>
    Effect.gen(function* () {
      const lines: Array<string> = []
      const log = makeRateLimitedLog(10_000, (line) => Effect.sync(() => void lines.push(line)))
      for (let i = 0; i < 1_000; i++) yield* log("malformed", `bad message ${i}`)
      yield* log("refused", "a refusal")
      assert.deepStrictEqual(lines, ["bad message 0", "a refusal"], "one line per kind, not per message")
      yield* TestClock.adjust(9_999)
      yield* log("malformed", "still inside the interval")
      assert.strictEqual(lines.length, 2)
      yield* TestClock.adjust(1)
      yield* log("malformed", "bad message again")
      assert.strictEqual(lines[2], "bad message again (and 1000 more like it since)")
    }),
  )

  it.effect("redacts a secret quoted in a line", () =>
    Effect.gen(function* () {
      const lines: Array<string> = []
      const log = makeRateLimitedLog(10_000, (line) => Effect.sync(() => void lines.push(line)))
      const token = "picus_Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZmdo"
      yield* log("refused", `result refused: no session for this peer and token (peer ${token})`)
      assert.notInclude(lines[0], token.slice(6, 20))
      assert.include(lines[0], "[picus secret]")
    }),
  )
})
