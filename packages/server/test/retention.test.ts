import { randomUUID } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Metrics, Store, StoreMemory } from "@picus/core"
import { loginOf } from "@picus/core/testing"
import { Effect, Metric } from "effect"
import { TestClock } from "effect/testing"
import { pruneRound } from "../src/gateway/Retention.ts"

const DAY = 86_400_000

/** A session that logged in and out, leaving its two log rows. */
const endedSession = Effect.gen(function* () {
  const store = yield* Store
  const peerId = `peer-${randomUUID().slice(0, 8)}`
  const sessionId = randomUUID()
  yield* store.login(loginOf(peerId, { sessionId }))
  yield* store.logout({ peerId, sessionId, epoch: 1, reason: "peer_logout", serverId: "server-a" })
  return peerId
})

const prunedLogRows = Metric.value(
  Metric.withAttributes(Metrics.prunedRowsTotal, { table: "registration_log" }),
)

describe("retention rounds", () => {
  it.effect("keep what is younger than the retention, prune what is older, and count it", () =>
    Effect.gen(function* () {
      const peerId = yield* endedSession
      const store = yield* Store
      const before = (yield* prunedLogRows).count
      yield* TestClock.setTime(Date.now() + 29 * DAY)
      yield* pruneRound(30)
      assert.strictEqual((yield* store.sessions({ peerId, limit: 10 })).length, 1, "29 days old: kept")
      yield* TestClock.setTime(Date.now() + 31 * DAY)
      const total = yield* pruneRound(30)
      assert.deepStrictEqual(yield* store.sessions({ peerId, limit: 10 }), [], "31 days old: pruned")
      assert.strictEqual(total?.logRows, 2)
      assert.strictEqual((yield* prunedLogRows).count - before, 2)
    }).pipe(Effect.provide(StoreMemory.layerMemory)),
  )
})
