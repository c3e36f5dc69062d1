import { assert, describe, it } from "@effect/vitest"
import { StoreError } from "@picus/core"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { makeRejectionLog, type RejectionRow } from "../src/gateway/RejectionLog.ts"

const flood = (log: ReturnType<typeof makeRejectionLog>, n: number, reason = "unknown or revoked token") =>
  Effect.forEach(
    Array.from({ length: n }, (_, i) => i),
    (i) => log.record({ peerId: `made-up-${i}`, reason, serverIp: null }),
    { discard: true },
  )

describe("refused registrations in the registration log", () => {
  it.effect("within the rate, one row each; beyond it, counted and written as one row per reason", () =>
    Effect.gen(function* () {
      const rows: Array<RejectionRow> = []
      const log = makeRejectionLog({ perSecond: 5, burst: 10 }, (row) =>
        Effect.sync(() => void rows.push(row)),
      )
      yield* flood(log, 10_000)
      yield* log.record({ peerId: "x", reason: "server_shutting_down", serverIp: null })
      assert.strictEqual(rows.length, 10, "the burst gets rows of its own")
      assert.deepStrictEqual(rows[0], {
        peerId: "made-up-0",
        reason: "unknown or revoked token",
        serverIp: null,
        repeats: 1,
      })
      yield* log.flush
      assert.deepStrictEqual(rows.slice(10), [
        { peerId: null, reason: "unknown or revoked token", serverIp: null, repeats: 9_990 },
        { peerId: null, reason: "server_shutting_down", serverIp: null, repeats: 1 },
      ])
      // Every refusal is accounted for, in rows or in counts.
      assert.strictEqual(
        rows.reduce((sum, row) => sum + row.repeats, 0),
        10_001,
      )
      // The rate refills with time: two seconds later, ten more rows of their own.
      yield* TestClock.adjust(2_000)
      yield* flood(log, 20)
      assert.strictEqual(rows.filter((row) => row.peerId !== null).length, 20)
      assert.strictEqual(log.counted(), 10)
    }),
  )

  it.effect("counts a failed write could not store are kept for the next flush", () =>
    Effect.gen(function* () {
      const rows: Array<RejectionRow> = []
      let failing = true
      const log = makeRejectionLog({ perSecond: 1, burst: 0 }, (row) =>
        failing
          ? Effect.fail(
              new StoreError({ operation: "logRejected", message: "unreachable", kind: "unavailable" }),
            )
          : Effect.sync(() => void rows.push(row)),
      )
      yield* flood(log, 3)
      yield* Effect.exit(log.flush)
      failing = false
      yield* flood(log, 2)
      yield* log.flush
      assert.deepStrictEqual(rows, [
        { peerId: null, reason: "unknown or revoked token", serverIp: null, repeats: 5 },
      ])
    }),
  )
})
