import { randomUUID } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import {
  JobScheduler,
  newKey,
  Protocol,
  type SessionStart,
  Store,
  StoreMemory,
  Transport,
  TransportError,
  TransportMemory,
} from "@picus/core"
import { eventually } from "@picus/core/testing"
import { Effect, Layer, Option } from "effect"
import { PeerAccess } from "../src/access/PeerAccess.ts"
import { newClusterKey } from "../src/clusterKey.ts"
import { makeGateway } from "../src/gateway/index.ts"
import { makeSessionRegistry } from "../src/gateway/SessionRegistry.ts"
import { enrollmentTokensFrom } from "../src/tokens.ts"
import { rawPeer } from "./support/rawPeer.ts"

/** Every session that ends takes its Redis user with it; one that lives on elsewhere keeps it. */

const recording = () => {
  const released: Array<readonly [string, string]> = []
  const layer = Layer.succeed(
    PeerAccess,
    PeerAccess.of({
      grant: () => Effect.succeed(undefined),
      release: (peerId, sessionId) => Effect.sync(() => void released.push([peerId, sessionId])),
    }),
  )
  return { released, layer }
}

const servicesWith = (access: Layer.Layer<PeerAccess>) =>
  JobScheduler.layer({ maxInFlight: 4 }).pipe(
    Layer.provideMerge(StoreMemory.layerMemory),
    Layer.provideMerge(TransportMemory.layerMemory),
    Layer.provideMerge(access),
  )

const sessionConfig = (leaseMs: number) => ({
  serverId: "a",
  heartbeatMs: 60_000,
  graceMs: 60_000,
  deadlineSlackMs: 30_000,
  leaseMs,
  sessionKey: newKey(),
})

const start = (peerId: string): SessionStart => ({
  peerId,
  sessionId: randomUUID(),
  serverIp: null,
  os: "linux",
  distro: "debian",
  hostname: null,
  agentVersion: "test",
})

const releasedOnce = (released: ReadonlyArray<readonly [string, string]>, entry: readonly [string, string]) =>
  eventually(
    Effect.sync(() => (released.some(([p, s]) => p === entry[0] && s === entry[1]) ? true : undefined)),
    "the session's Redis user released",
    { timeoutMs: 5_000 },
  )

describe("sessions and their Redis users", () => {
  it.live("a session that cannot start releases the user granted for it", () => {
    const { released, layer } = recording()
    // Its acceptance cannot be sent: the start fails after the login was written.
    const refusing = Layer.effect(
      Transport,
      Effect.map(Transport, (t) =>
        Transport.of({
          ...t,
          sendToPeer: () => Effect.fail(new TransportError({ operation: "xadd inbox", message: "refused" })),
        }),
      ),
    ).pipe(Layer.provide(TransportMemory.layerMemory))
    return Effect.gen(function* () {
      const registry = yield* makeSessionRegistry("a", 60_000, sessionConfig(60_000))
      const s = start("p0")
      const exit = yield* Effect.exit(registry.start(s))
      assert.isTrue(exit._tag === "Failure", "the start failed")
      assert.deepStrictEqual(released, [[s.peerId, s.sessionId]])
    }).pipe(
      Effect.scoped,
      Effect.provide(
        JobScheduler.layer({ maxInFlight: 4 }).pipe(
          Layer.provideMerge(StoreMemory.layerMemory),
          Layer.provideMerge(refusing),
          Layer.provideMerge(layer),
        ),
      ),
    )
  })

  it.live("a session that ends here releases its user", () => {
    const { released, layer } = recording()
    return Effect.gen(function* () {
      const registry = yield* makeSessionRegistry("a", 60_000, sessionConfig(60_000))
      const s = start("p1")
      const session = yield* registry.start(s)
      yield* session.end(Protocol.LogoutReason.peerShutdown)
      yield* releasedOnce(released, [s.peerId, s.sessionId])
    }).pipe(Effect.scoped, Effect.provide(servicesWith(layer)))
  })

  it.live("a session closed elsewhere (replaced, revoked) is let go, and its user released", () => {
    const { released, layer } = recording()
    return Effect.gen(function* () {
      const store = yield* Store
      const registry = yield* makeSessionRegistry("a", 60_000, sessionConfig(60_000))
      const s = start("p1")
      const session = yield* registry.start(s)
      // What a revocation does in PostgreSQL; the holder's next keep-alive then lets it go.
      yield* store.logout({
        peerId: s.peerId,
        sessionId: s.sessionId,
        epoch: 1,
        reason: "revoked",
        serverId: "operator",
      })
      yield* session.release
      yield* releasedOnce(released, [s.peerId, s.sessionId])
    }).pipe(Effect.scoped, Effect.provide(servicesWith(layer)))
  })

  it.live("a session let go because another instance took it over keeps its user", () => {
    const { released, layer } = recording()
    return Effect.gen(function* () {
      const store = yield* Store
      const registry = yield* makeSessionRegistry("a", 50, sessionConfig(50))
      const s = start("p1")
      const session = yield* registry.start(s)
      yield* Effect.sleep(100) // its lease ran out: "a" was paused
      const taken = yield* store.takeOverSessions({ serverId: "b", leaseMs: 60_000, limit: 10 })
      assert.deepStrictEqual(
        taken.map((t) => t.sessionId),
        [s.sessionId],
      )
      yield* session.release
      yield* Effect.sleep(100)
      assert.deepStrictEqual(released, [], "the session lives on at b, with its user")
      assert.isTrue(Option.isSome(yield* store.sessionOf(s.peerId)))
    }).pipe(Effect.scoped, Effect.provide(servicesWith(layer)))
  })

  it.live("the gateway releases a session's user when its peer logs out", () => {
    const { released, layer } = recording()
    return Effect.gen(function* () {
      const store = yield* Store
      const transport = yield* Transport
      const gateway = yield* makeGateway({
        clusterKey: newClusterKey(),
        serverId: "a",
        leaseMs: 3_000,
        deliveryDeadlineMs: 60_000,
        deadlineSlackMs: 30_000,
        heartbeatMs: 200,
        graceMs: 5_000,
        enrollment: enrollmentTokensFrom("good-token"),
        batchSize: 64,
        staleRegisterMs: 30_000,
        reclaimIdleMs: 30_000,
        drainMs: 1_000,
      })
      yield* Effect.forkScoped(gateway.run)
      const peer = yield* rawPeer("p1", "good-token", { agentVersion: "test", jobs: 0 })
      const { sessionId } = Option.getOrThrow(yield* store.sessionOf("p1"))
      yield* transport.sendUplink(
        Protocol.encodeMessage({
          msg: "logout",
          peer_id: "p1",
          token: peer.session,
          reason: Protocol.LogoutReason.peerShutdown,
        }),
      )
      yield* releasedOnce(released, ["p1", sessionId])
    }).pipe(Effect.scoped, Effect.provide(servicesWith(layer)))
  })
})
