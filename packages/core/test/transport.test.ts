import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, type Layer, type Scope, Stream } from "effect"
import { Redis } from "ioredis"
import { afterAll } from "vitest"
import { deleteKeysWithPrefix, testKeyPrefix, testRedisUrl } from "../src/testing/index.ts"
import { layerMemory } from "../src/transport/memory.ts"
import { layerRedis } from "../src/transport/redis.ts"
import { Transport } from "../src/transport/Transport.ts"

const url = testRedisUrl()
const prefixes: Array<string> = []
afterAll(async () => {
  for (const prefix of prefixes) await deleteKeysWithPrefix(url, prefix)
})

const layers: Array<[string, () => Layer.Layer<Transport, unknown>]> = [
  ["memory", () => layerMemory],
  [
    "redis",
    () => {
      const prefix = testKeyPrefix()
      prefixes.push(prefix)
      return layerRedis({ url, prefix })
    },
  ],
]

const run = <A, E>(
  layer: () => Layer.Layer<Transport, unknown>,
  body: Effect.Effect<A, E, Transport | Scope.Scope>,
) => body.pipe(Effect.scoped, Effect.provide(layer()))

describe.each(layers)("Transport contract (%s)", (_name, layer) => {
  it.live("uplink delivers entries in order to a consumer, once", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.uplinkReader("a")
        for (const m of ["one", "two", "three"]) yield* t.sendUplink(m)
        const got = yield* reader.read({ count: 10, blockMs: 0 })
        assert.deepStrictEqual(
          got.map((d) => d.payload),
          ["one", "two", "three"],
        )
        assert.isTrue(got.every((d) => !d.redelivered))
        const again = yield* reader.read({ count: 10, blockMs: 20 })
        assert.strictEqual(again.length, 0)
      }),
    ),
  )

  it.live("two consumers split the uplink: every entry goes to exactly one", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const a = yield* t.uplinkReader("a")
        const b = yield* t.uplinkReader("b")
        for (let i = 0; i < 10; i++) yield* t.sendUplink(`m${i}`)
        const fromA = yield* a.read({ count: 4, blockMs: 0 })
        const fromB = yield* b.read({ count: 100, blockMs: 0 })
        assert.strictEqual(fromA.length, 4)
        assert.strictEqual(fromB.length, 6)
        const all = [...fromA, ...fromB].map((d) => d.payload).sort()
        assert.deepStrictEqual(all, Array.from({ length: 10 }, (_, i) => `m${i}`).sort())
      }),
    ),
  )

  it.live("unacknowledged entries are reclaimed by another consumer; acknowledged ones are not", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const dead = yield* t.uplinkReader("dead")
        const alive = yield* t.uplinkReader("alive")
        yield* t.sendUplink("acked")
        yield* t.sendUplink("lost")
        const taken = yield* dead.read({ count: 10, blockMs: 0 })
        assert.strictEqual(taken.length, 2)
        yield* dead.ack([taken[0]!])
        const tooSoon = yield* alive.reclaim(60_000, 10)
        assert.strictEqual(tooSoon.length, 0)
        yield* Effect.sleep(30)
        const reclaimed = yield* alive.reclaim(10, 10)
        assert.deepStrictEqual(
          reclaimed.map((d) => [d.payload, d.redelivered]),
          [["lost", true]],
        )
        yield* alive.ack([reclaimed[0]!])
        yield* Effect.sleep(30)
        assert.strictEqual((yield* alive.reclaim(10, 10)).length, 0)
      }),
    ),
  )

  it.live("a forwarded message reaches only the instance it was sent to, and is acked there", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const a = yield* t.uplinkReader("a")
        const b = yield* t.uplinkReader("b")
        yield* t.forward("b", "for b")
        yield* t.sendUplink("shared")
        const fromA = yield* a.read({ count: 10, blockMs: 0 })
        const fromB = yield* b.read({ count: 10, blockMs: 0 })
        assert.deepStrictEqual(
          fromA.map((d) => [d.payload, d.forwarded]),
          [["shared", false]],
        )
        assert.deepStrictEqual(
          fromB.map((d) => [d.payload, d.forwarded]),
          [["for b", true]],
        )
        yield* b.ack(fromB)
        yield* a.ack(fromA)
        yield* Effect.sleep(30)
        assert.strictEqual((yield* b.reclaim(10, 10)).length, 0)
      }),
    ),
  )

  it.live("an instance takes back its own forwarded messages it did not ack", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const b = yield* t.uplinkReader("b")
        yield* t.forward("b", "again")
        assert.strictEqual((yield* b.read({ count: 10, blockMs: 0 })).length, 1)
        yield* Effect.sleep(30)
        const back = yield* b.reclaim(10, 10)
        assert.deepStrictEqual(
          back.map((d) => [d.payload, d.forwarded, d.redelivered]),
          [["again", true, true]],
        )
      }),
    ),
  )

  it.live("owner marks expire, and only their owner removes them", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        yield* t.claimPeers("s1", ["p1", "p2"], 300, "take")
        assert.strictEqual(yield* t.ownerOf("p1"), "s1")
        yield* t.releasePeer("p1", "s2")
        assert.strictEqual(yield* t.ownerOf("p1"), "s1", "another instance cannot remove the mark")
        yield* t.releasePeer("p1", "s1")
        assert.isUndefined(yield* t.ownerOf("p1"))
        assert.strictEqual(yield* t.ownerOf("p2"), "s1")
        yield* Effect.sleep(400)
        assert.isUndefined(yield* t.ownerOf("p2"), "expired")
        assert.isUndefined(yield* t.ownerOf("never-claimed"))
        // A renewal extends free and own marks, never another instance's.
        yield* t.claimPeers("s1", ["p3"], 5_000, "take")
        yield* t.claimPeers("s2", ["p3", "p4"], 5_000, "renew")
        assert.strictEqual(yield* t.ownerOf("p3"), "s1")
        assert.strictEqual(yield* t.ownerOf("p4"), "s2")
        yield* t.claimPeers("s2", ["p3"], 5_000, "take")
        assert.strictEqual(yield* t.ownerOf("p3"), "s2")
      }),
    ),
  )

  it.live("a blocked uplink read wakes up when an entry arrives", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.uplinkReader("a")
        const fiber = yield* Effect.forkChild(reader.read({ count: 10, blockMs: 5_000 }))
        yield* Effect.sleep(50)
        const started = Date.now()
        yield* t.sendUplink("late")
        const got = yield* Fiber.join(fiber)
        assert.deepStrictEqual(
          got.map((d) => d.payload),
          ["late"],
        )
        assert.isBelow(Date.now() - started, 2_000)
      }),
    ),
  )

  it.live("a peer's inbox keeps entries until trimmed, and reading after the tail skips old ones", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        assert.strictEqual(yield* t.inboxTail("p1"), "0-0")
        yield* t.sendToPeer("p1", "old")
        const tail = yield* t.inboxTail("p1")
        const newId = yield* t.sendToPeer("p1", "new")
        const reader = yield* t.inboxReader("p1")
        assert.deepStrictEqual(
          (yield* reader.read(tail, { count: 10, blockMs: 0 })).map((e) => e.payload),
          ["new"],
        )
        assert.deepStrictEqual(
          (yield* reader.read("0-0", { count: 10, blockMs: 0 })).map((e) => e.payload),
          ["old", "new"],
        )
        yield* t.trimInbox("p1", tail)
        assert.deepStrictEqual(
          (yield* reader.read("0-0", { count: 10, blockMs: 0 })).map((e) => e.id),
          [newId],
        )
      }),
    ),
  )

  it.live("inboxes are per peer, whatever characters the peer id has", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        yield* t.sendToPeer("a:b", "for a:b")
        yield* t.sendToPeer("a*", "for a*")
        yield* t.sendToPeer("a", "for a")
        for (const peer of ["a:b", "a*", "a"]) {
          const reader = yield* t.inboxReader(peer)
          const got = yield* reader.read("0-0", { count: 10, blockMs: 0 })
          assert.deepStrictEqual(
            got.map((e) => e.payload),
            [`for ${peer}`],
          )
        }
      }),
    ),
  )

  it.live("a blocked inbox read wakes up when the server sends", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.inboxReader("p")
        const fiber = yield* Effect.forkChild(reader.read("0-0", { count: 10, blockMs: 5_000 }))
        yield* Effect.sleep(50)
        yield* t.sendToPeer("p", "job")
        assert.deepStrictEqual(
          (yield* Fiber.join(fiber)).map((e) => e.payload),
          ["job"],
        )
      }),
    ),
  )

  it.live("the feed reaches subscribers", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const fiber = yield* Effect.forkChild(t.subscribe.pipe(Stream.take(2), Stream.runCollect))
        yield* Effect.sleep(100)
        yield* t.publish("e1")
        yield* t.publish("e2")
        assert.deepStrictEqual(Array.from(yield* Fiber.join(fiber)), ["e1", "e2"])
      }),
    ),
  )
})

describe("Redis transport", () => {
  it.live("honours the database index in REDIS_URL", () => {
    const prefix = testKeyPrefix()
    const db9 = `${url.replace(/\/\d*$/, "")}/9`
    return Effect.gen(function* () {
      const t = yield* Transport
      yield* t.sendToPeer("p", "hello")
      const count = yield* Effect.promise(async () => {
        const direct = new Redis(db9)
        try {
          return await direct.xlen(`${prefix}:peer:p:inbox`)
        } finally {
          direct.disconnect()
          await deleteKeysWithPrefix(db9, prefix)
        }
      })
      assert.strictEqual(count, 1)
    }).pipe(Effect.scoped, Effect.provide(layerRedis({ url: db9, prefix })))
  })

  it.live("fails with a TransportError, not a crash, when Redis is unreachable", () =>
    Effect.gen(function* () {
      const t = yield* Transport
      const error = yield* Effect.flip(t.sendUplink("x").pipe(Effect.timeout("10 seconds")))
      assert.strictEqual(error._tag, "TransportError")
    }).pipe(
      Effect.scoped,
      Effect.provide(layerRedis({ url: "redis://127.0.0.1:1", prefix: testKeyPrefix() })),
    ),
  )
})
