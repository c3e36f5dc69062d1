import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { makeTickWheel, wheelSlots } from "../src/index.ts"

describe("TickWheel", () => {
  it.effect("ticks each callback once per period, a slot at a time, until it is stopped", () =>
    Effect.gen(function* () {
      const wheel = yield* makeTickWheel(1_000, 4)
      const counts = [0, 0, 0, 0, 0]
      const stops = counts.map((_, i) =>
        wheel.register(() => {
          counts[i]!++
        }),
      )
      // A quarter period: one slot's callbacks, not the others'.
      yield* TestClock.adjust("250 millis")
      assert.deepStrictEqual(
        counts.reduce((a, b) => a + b, 0),
        1,
      )
      yield* TestClock.adjust("750 millis")
      assert.deepStrictEqual(counts, [1, 1, 1, 1, 1])
      stops[0]!()
      yield* TestClock.adjust("3000 millis")
      assert.deepStrictEqual(counts, [1, 4, 4, 4, 4])
    }),
  )

  it.effect("a callback that throws does not stop the rest of its slot, or the wheel", () =>
    Effect.gen(function* () {
      const wheel = yield* makeTickWheel(100, 1)
      let ran = 0
      wheel.register(() => {
        throw new Error("boom")
      })
      wheel.register(() => {
        ran++
      })
      yield* TestClock.adjust("300 millis")
      assert.strictEqual(ran, 3)
    }),
  )

  it("slots of about a quarter second", () => {
    assert.strictEqual(wheelSlots(5_000), 20)
    assert.strictEqual(wheelSlots(100), 1)
  })
})
