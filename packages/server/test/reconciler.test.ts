import { randomUUID } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Metrics, Store, StoreMemory, TransportMemory } from "@picus/core"
import { loginOf } from "@picus/core/testing"
import { Effect, Layer, Metric } from "effect"
import { reconcile } from "../src/gateway/Reconciler.ts"

const undeliverable = Metric.value(Metric.withAttributes(Metrics.ticketsTotal, { state: "undeliverable" }))

describe("the deadline sweep", () => {
  it.effect("ends a ticket its offline peer never took as undeliverable, and counts it", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const peerId = `peer-${randomUUID().slice(0, 8)}`
      const sessionId = randomUUID()
      yield* store.login(loginOf(peerId, { sessionId }))
      yield* store.logout({ peerId, sessionId, epoch: 1, reason: "peer_logout", serverId: "server-a" })
      const { tickets } = yield* store.submitTickets({
        peerId,
        serverId: "cli",
        jobs: [{ name: "late", command: "true", timeoutMs: 1_000 }],
      })
      const before = (yield* undeliverable).count
      // A deadline already passed when the ticket was made.
      yield* reconcile({ deliveryDeadlineMs: -60_000, deadlineSlackMs: 0 })
      assert.strictEqual(
        yield* store.ticketState(tickets[0]!.ticket).pipe(Effect.map((s) => s._tag === "Some" && s.value)),
        "undeliverable",
      )
      assert.strictEqual((yield* undeliverable).count - before, 1)
    }).pipe(Effect.provide(Layer.merge(StoreMemory.layerMemory, TransportMemory.layerMemory))),
  )
})
