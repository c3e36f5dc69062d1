import { assert, describe, it } from "@effect/vitest"
import { Store, StoreMemory } from "@picus/core"
import { Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { claimServerId, claimWaitMs, ServerIdInUse } from "../src/claimServerId.ts"

// On the in-memory Store, with the test clock: the wait for a keep-alive is virtual.

const LEASE_MS = 15_000
const WAIT_MS = claimWaitMs(LEASE_MS)

/** Forks the claim and lets it read the row and start its wait. */
const startClaim = (serverId: string) =>
  Effect.gen(function* () {
    const fiber = yield* claimServerId(serverId, LEASE_MS).pipe(Effect.forkChild)
    yield* TestClock.adjust("1 millis")
    return fiber
  })

describe("claimServerId", () => {
  it.effect("waits a keep-alive period and more, at most a lease", () =>
    Effect.sync(() => {
      assert.isAbove(WAIT_MS, LEASE_MS / 3)
      assert.isBelow(WAIT_MS, LEASE_MS)
    }),
  )

  it.effect("starts at once on a new id, and on one that stopped cleanly", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const fresh = yield* startClaim("new")
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(fresh)))
      yield* store.instanceAlive("clean")
      yield* store.instanceStopped("clean")
      const clean = yield* startClaim("clean")
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(clean)))
    }).pipe(Effect.provide(StoreMemory.layerMemory)),
  )

  it.effect("refuses an id whose holder says it is alive while the start waits", () =>
    Effect.gen(function* () {
      const store = yield* Store
      yield* store.instanceAlive("busy")
      const claim = yield* startClaim("busy")
      yield* TestClock.adjust(LEASE_MS / 3)
      yield* store.instanceAlive("busy") // the live holder's keep-alive
      yield* TestClock.adjust(WAIT_MS)
      const exit = yield* Fiber.await(claim)
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
      assert.isTrue(error?._tag === "Fail" && error.error instanceof ServerIdInUse)
      assert.include(String(error?._tag === "Fail" && error.error.message), "busy")
    }).pipe(Effect.provide(StoreMemory.layerMemory)),
  )

  it.effect("takes over, after the wait, the id of a holder that was killed", () =>
    Effect.gen(function* () {
      const store = yield* Store
      yield* store.instanceAlive("killed") // and then nothing more: kill -9
      const claim = yield* startClaim("killed")
      yield* TestClock.adjust(WAIT_MS - 10)
      assert.isUndefined(claim.pollUnsafe(), "still waiting for a keep-alive")
      yield* TestClock.adjust(10)
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(claim)))
    }).pipe(Effect.provide(StoreMemory.layerMemory)),
  )

  it.effect("takes at once the id of an instance silent for a lease", () =>
    Effect.gen(function* () {
      const store = yield* Store
      yield* store.instanceAlive("lost")
      yield* TestClock.withLive(Effect.sleep("60 millis"))
      const exit = yield* claimServerId("lost", 50).pipe(Effect.exit)
      assert.isTrue(Exit.isSuccess(exit))
    }).pipe(Effect.provide(StoreMemory.layerMemory)),
  )
})
