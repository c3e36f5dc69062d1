import { randomBytes } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Scope, Stream } from "effect"
import { Redis } from "ioredis"
import { afterAll } from "vitest"
import { makeKeys, serverAclRules } from "../src/keys.ts"
import { MAX_MESSAGE_BYTES } from "../src/protocol/limits.ts"
import { deleteKeysWithPrefix, testKeyPrefix, testRedisUrl } from "../src/testing/index.ts"
import { layerMemory } from "../src/transport/memory.ts"
import { layerRedis } from "../src/transport/redis.ts"
import {
  compareStreamIds,
  type Delivery,
  type InboxBatch,
  type InboxFan,
  REPLY_TTL_MS,
  Transport,
  type UplinkReader,
} from "../src/transport/Transport.ts"

const url = testRedisUrl()
const prefixes: Array<string> = []
const users: Array<string> = []
afterAll(async () => {
  for (const prefix of prefixes) await deleteKeysWithPrefix(url, prefix)
  const admin = new Redis(url)
  try {
    if (users.length > 0) await admin.call("ACL", "DELUSER", ...users)
  } finally {
    admin.disconnect()
  }
})

/** The transport logged in as the servers' user docs/security.md tells the operator to create. */
const asServerUser = () => {
  const prefix = testKeyPrefix()
  prefixes.push(prefix)
  const username = `${prefix}:server`
  users.push(username)
  const password = randomBytes(16).toString("hex")
  return Layer.unwrap(
    Effect.promise(async () => {
      const admin = new Redis(url)
      try {
        await admin.call(
          "ACL",
          "SETUSER",
          username,
          "reset",
          "on",
          `>${password}`,
          ...serverAclRules(makeKeys(prefix)),
        )
      } finally {
        admin.disconnect()
      }
      return layerRedis({ url, prefix, username, password })
    }),
  )
}

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
  ["redis, as the servers' own Redis user", asServerUser],
]

/** Takes from a fan until `total` entries came, and gives them per peer, in arrival order. */
const takeEntries = (fan: InboxFan, total: number) =>
  Effect.gen(function* () {
    const got = new Map<string, Array<string>>()
    let n = 0
    while (n < total) {
      const batches: ReadonlyArray<InboxBatch> = yield* fan.take
      for (const { peerId, entries } of batches) {
        got.set(peerId, [...(got.get(peerId) ?? []), ...entries.map((e) => e.payload)])
        n += entries.length
      }
    }
    return got
  }).pipe(Effect.timeout("10 seconds"))

/** Reads one uplink reader until `total` entries came (failing after a while). */
const readAll = (reader: UplinkReader, total: number) =>
  Effect.gen(function* () {
    const got: Array<Delivery> = []
    while (got.length < total) got.push(...(yield* reader.read({ count: 500, blockMs: 200 })))
    return got
  }).pipe(Effect.timeout("20 seconds"))

/** Reads several readers side by side until, together, they have `total` entries; then a last look. */
const readTogether = (readers: ReadonlyArray<UplinkReader>, total: number) =>
  Effect.gen(function* () {
    const got: Array<Delivery> = []
    yield* Effect.forEach(
      readers,
      (reader) =>
        Effect.gen(function* () {
          while (got.length < total) got.push(...(yield* reader.read({ count: 100, blockMs: 50 })))
        }),
      { concurrency: "unbounded", discard: true },
    )
    for (const reader of readers) got.push(...(yield* reader.read({ count: 100, blockMs: 100 })))
    return got
  }).pipe(Effect.timeout("20 seconds"))

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

  it.live("what a lost instance left in its own stream, read or not, is drained by another", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const lost = yield* t.uplinkReader("lost")
        const heir = yield* t.uplinkReader("heir")
        assert.deepStrictEqual(yield* heir.drainStreamOf("never-existed", 10), [])
        yield* t.forward("lost", "read, never acked")
        yield* t.forward("lost", "acked")
        const [unacked, acked] = yield* lost.read({ count: 2, blockMs: 0 })
        yield* lost.ack([acked!])
        assert.strictEqual(unacked?.payload, "read, never acked")
        yield* t.forward("lost", "never read")
        const drained = yield* heir.drainStreamOf("lost", 10)
        assert.deepStrictEqual(
          drained.map((d) => [d.payload, d.forwarded, d.fromServerId]),
          [
            ["read, never acked", true, "lost"],
            ["never read", true, "lost"],
          ],
        )
        yield* heir.ack(drained)
        assert.deepStrictEqual(yield* heir.drainStreamOf("lost", 10), [], "acked: gone")
        assert.deepStrictEqual(yield* heir.read({ count: 10, blockMs: 0 }), [], "nothing leaked into its own")
      }),
    ),
  )

  it.live("the uplink backlog is the age of the oldest entry no instance has read yet", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        assert.strictEqual(yield* t.uplinkBacklogMs, 0, "no uplink yet")
        const reader = yield* t.uplinkReader("a")
        yield* t.sendUplink("first")
        yield* Effect.sleep(60)
        yield* t.sendUplink("second")
        assert.isAtLeast(yield* t.uplinkBacklogMs, 50)
        yield* reader.read({ count: 1, blockMs: 0 })
        assert.isBelow(yield* t.uplinkBacklogMs, 50, "the first is read: the second is younger")
        yield* reader.read({ count: 1, blockMs: 0 })
        assert.strictEqual(yield* t.uplinkBacklogMs, 0)
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

  it.live("a batch of uplink messages arrives whole and in order", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.uplinkReader("a")
        const receipts = yield* t.sendUplinkBatch(["b1", "b2", "b3"])
        assert.strictEqual(receipts.length, 3)
        assert.deepStrictEqual(yield* t.sendUplinkBatch([]), [])
        const got = yield* readAll(reader, 3)
        assert.deepStrictEqual(
          got.map((d) => d.payload),
          ["b1", "b2", "b3"],
        )
      }),
    ),
  )

  it.live("the uplink keeps the order of the pushes, over many pushes and batches", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.uplinkReader("a")
        const sent = Array.from({ length: 1500 }, (_, i) => `m${i}`)
        for (let i = 0; i < sent.length; i += 100) {
          yield* t.sendUplink(sent[i]!)
          yield* t.sendUplinkBatch(sent.slice(i + 1, i + 100))
        }
        const got = yield* readAll(reader, sent.length)
        assert.deepStrictEqual(
          got.map((d) => d.payload),
          sent,
        )
      }),
    ),
  )

  it.live("two instances move and read the uplink side by side: nothing lost, nothing twice, in order", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const a = yield* t.uplinkReader("a")
        const b = yield* t.uplinkReader("b")
        const sent = Array.from({ length: 2000 }, (_, i) => `m${i}`)
        const pushing = yield* Effect.forkChild(
          Effect.forEach(
            Array.from({ length: 40 }, (_, i) => sent.slice(i * 50, i * 50 + 50)),
            (chunk) => t.sendUplinkBatch(chunk).pipe(Effect.andThen(Effect.yieldNow)),
            { discard: true },
          ),
        )
        const all = yield* readTogether([a, b], sent.length)
        yield* Fiber.join(pushing)
        assert.strictEqual(all.length, sent.length, "every entry once")
        // The stream's order is the intake's: by entry id, the payloads are in push order.
        const byId = [...all].sort((x, y) => compareStreamIds(x.id, y.id)).map((d) => d.payload)
        assert.deepStrictEqual(byId, sent)
      }),
    ),
  )

  it.live("an entry over MAX_MESSAGE_BYTES is dropped on the way and counted; the rest go on in order", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const reader = yield* t.uplinkReader("a")
        const before = yield* t.intakeDropped
        yield* t.sendUplink("small 1")
        yield* t.sendUplink("x".repeat(MAX_MESSAGE_BYTES + 1))
        yield* t.sendUplinkBatch(["small 2", "é".repeat(MAX_MESSAGE_BYTES / 2 + 1), "small 3"])
        yield* t.sendUplink("y".repeat(MAX_MESSAGE_BYTES)) // exactly the limit passes
        const got = yield* readAll(reader, 4)
        assert.deepStrictEqual(
          got.map((d) => (d.payload.length > 100 ? `${d.payload[0]}*${d.payload.length}` : d.payload)),
          ["small 1", "small 2", "small 3", `y*${MAX_MESSAGE_BYTES}`],
        )
        assert.strictEqual((yield* t.intakeDropped) - before, 2)
      }),
    ),
  )

  it.live("an instance that stops moving and starts again loses nothing pushed meanwhile", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const sent = Array.from({ length: 600 }, (_, i) => `m${i}`)
        const firstRun = yield* Scope.make()
        yield* t.uplinkReader("a").pipe(Scope.provide(firstRun))
        const pushing = yield* Effect.forkChild(
          Effect.forEach(
            Array.from({ length: 60 }, (_, i) => sent.slice(i * 10, i * 10 + 10)),
            (chunk) => t.sendUplinkBatch(chunk).pipe(Effect.andThen(Effect.sleep(1))),
            { discard: true },
          ),
        )
        yield* Effect.sleep(20)
        yield* Scope.close(firstRun, Exit.void) // its mover stops mid-way
        yield* Fiber.join(pushing)
        const again = yield* t.uplinkReader("a")
        const got = yield* readAll(again, sent.length)
        assert.deepStrictEqual(
          got.map((d) => d.payload),
          sent,
        )
      }),
    ),
  )

  it.live("the uplink backlog counts what waits on the intake, from when it was first seen there", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        // No instance is reading: nothing is moved (in Redis), or it waits on the uplink (in memory).
        yield* t.sendUplink("waiting")
        yield* t.uplinkBacklogMs
        yield* Effect.sleep(80)
        assert.isAtLeast(yield* t.uplinkBacklogMs, 60)
        const reader = yield* t.uplinkReader("a")
        assert.deepStrictEqual(
          (yield* readAll(reader, 1)).map((d) => d.payload),
          ["waiting"],
        )
        assert.strictEqual(yield* t.uplinkBacklogMs, 0)
      }),
    ),
  )

  it.live("an inbox fan gives each peer's new entries in order, skips old ones, and stops at remove", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        yield* t.sendToPeer("p1", "old")
        const fan = yield* t.inboxFan({ blockMs: 100 })
        yield* fan.add(["p1", "p2"])
        yield* fan.add(["p1"]) // already in: keeps its place
        for (const m of ["a", "b", "c"]) {
          yield* t.sendToPeer("p1", `p1-${m}`)
          yield* t.sendToPeer("p2", `p2-${m}`)
        }
        yield* t.sendToPeer("p3", "not in the fan")
        const got = yield* takeEntries(fan, 6)
        assert.deepStrictEqual(Object.fromEntries(got), {
          p1: ["p1-a", "p1-b", "p1-c"],
          p2: ["p2-a", "p2-b", "p2-c"],
        })
        yield* fan.remove(["p1"])
        yield* t.sendToPeer("p1", "after remove")
        yield* t.sendToPeer("p2", "p2-d")
        const more = yield* takeEntries(fan, 1)
        assert.deepStrictEqual(Object.fromEntries(more), { p2: ["p2-d"] })
        yield* Effect.sleep(250)
        const late = yield* fan.take.pipe(Effect.timeoutOption("50 millis"))
        assert.isTrue(late._tag === "None", "nothing for a removed peer")
      }),
    ),
  )

  it.live(
    "an inbox fan reads registrations' reply streams too, from their start, marked with their nonce",
    () =>
      run(
        layer,
        Effect.gen(function* () {
          const t = yield* Transport
          const fan = yield* t.inboxFan({ blockMs: 100 })
          yield* fan.add(["p1"])
          yield* t.sendReply("n-early", "answered before it was watched")
          yield* fan.addReplies([
            { nonce: "n-early", peerId: "p1" },
            { nonce: "n-late", peerId: "p2" },
          ])
          yield* t.sendReply("n-late", "answered after")
          yield* t.sendToPeer("p1", "inbox")
          const got: Array<readonly [string, string | undefined, string]> = []
          while (got.length < 3) {
            for (const b of yield* fan.take.pipe(Effect.timeout("10 seconds")))
              for (const e of b.entries) got.push([b.peerId, b.nonce, e.payload])
          }
          assert.sameDeepMembers(got, [
            ["p1", "n-early", "answered before it was watched"],
            ["p2", "n-late", "answered after"],
            ["p1", undefined, "inbox"],
          ])
          yield* fan.removeReplies(["n-late"])
          yield* t.sendReply("n-late", "after remove")
          yield* Effect.sleep(250)
          const late = yield* fan.take.pipe(Effect.timeoutOption("50 millis"))
          assert.isTrue(late._tag === "None", "nothing for a reply stream no longer watched")
        }),
      ),
  )

  it.live("an inbox fan reads a peer added while it waits, without waiting out its block", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const fan = yield* t.inboxFan({ blockMs: 5_000 })
        yield* fan.add(["first"])
        yield* Effect.sleep(100) // the read over "first" alone is out now
        const started = Date.now()
        yield* fan.add(["second"])
        yield* t.sendToPeer("second", "hello")
        const got = yield* takeEntries(fan, 1)
        assert.deepStrictEqual(Object.fromEntries(got), { second: ["hello"] })
        assert.isBelow(Date.now() - started, 2_000)
      }),
    ),
  )

  it.live("an inbox fan spreads many peers over several reads and misses none", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const fan = yield* t.inboxFan({ keysPerRead: 10, blockMs: 100, count: 2 })
        const peers = Array.from({ length: 35 }, (_, i) => `peer:${i}`)
        yield* fan.add(peers)
        for (let round = 0; round < 5; round++)
          for (const peer of peers) yield* t.sendToPeer(peer, `${peer}#${round}`)
        const got = yield* takeEntries(fan, peers.length * 5)
        for (const peer of peers)
          assert.deepStrictEqual(
            got.get(peer),
            Array.from({ length: 5 }, (_, round) => `${peer}#${round}`),
          )
      }),
    ),
  )

  it.live("trimInboxes trims many inboxes, each up to its own id", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const a1 = yield* t.sendToPeer("a", "a1")
        yield* t.sendToPeer("a", "a2")
        yield* t.sendToPeer("b", "b1")
        const b2 = yield* t.sendToPeer("b", "b2")
        yield* t.trimInboxes([
          ["a", a1],
          ["b", b2],
        ])
        yield* t.trimInboxes([])
        const a = yield* t.inboxReader("a")
        const b = yield* t.inboxReader("b")
        assert.deepStrictEqual(
          (yield* a.read("0-0", { count: 10, blockMs: 0 })).map((e) => e.payload),
          ["a2"],
        )
        assert.strictEqual((yield* b.read("0-0", { count: 10, blockMs: 0 })).length, 0)
      }),
    ),
  )

  it.live("a peer's many messages land in its inbox in order, in one go", () =>
    run(
      layer,
      Effect.gen(function* () {
        const t = yield* Transport
        const inbox = yield* t.inboxReader("p")
        const payloads = Array.from({ length: 20 }, (_, i) => `job-${i}`)
        const ids = yield* t.sendManyToPeer("p", payloads)
        assert.strictEqual(new Set(ids).size, payloads.length)
        const read = yield* inbox.read("0-0", { count: 100, blockMs: 0 })
        assert.deepStrictEqual(
          read.map((e) => e.payload),
          payloads,
        )
        assert.deepStrictEqual(
          read.map((e) => e.id),
          ids,
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
  it.live("a lazy feed event is encoded only while the feed has listeners, also a listener elsewhere", () => {
    const prefix = testKeyPrefix()
    prefixes.push(prefix)
    let encoded = 0
    const event = (text: string) => () => {
      encoded++
      return text
    }
    return Effect.gen(function* () {
      const t = yield* Transport
      for (let i = 0; i < 50; i++) yield* t.publish(event("nobody hears this"))
      assert.strictEqual(encoded, 0, "nothing encoded while nobody listens")
      // A listener in another process: the publisher learns of it within a second.
      const heard: Array<string> = []
      const listener = new Redis(url)
      yield* Effect.addFinalizer(() => Effect.sync(() => listener.disconnect()))
      listener.on("message", (_channel: string, message: string) => heard.push(message))
      yield* Effect.promise(() => listener.subscribe(makeKeys(prefix).events))
      const deadline = Date.now() + 5_000
      while (heard.length === 0 && Date.now() < deadline) {
        yield* t.publish(event("now someone does"))
        yield* Effect.sleep(50)
      }
      assert.include(heard, "now someone does")
      assert.isAtLeast(encoded, 1)
    }).pipe(Effect.scoped, Effect.provide(layerRedis({ url, prefix })))
  })

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

  it.live("a notice to an inbox nobody has makes it expire; a session's acceptance lifts that", () => {
    const prefix = testKeyPrefix()
    return Effect.gen(function* () {
      const t = yield* Transport
      const ttlOf = (peerId: string) =>
        Effect.promise(async () => {
          const direct = new Redis(url)
          try {
            return await direct.pttl(`${prefix}:peer:${peerId}:inbox`)
          } finally {
            direct.disconnect()
          }
        })
      yield* t.sendToPeer("made-up", "rejected", { lifetime: "notice" })
      const ttl = yield* ttlOf("made-up")
      assert.isTrue(ttl > 0 && ttl <= REPLY_TTL_MS, `a new inbox expires (pttl ${ttl})`)
      yield* t.sendToPeer("real", "a job")
      yield* t.sendToPeer("real", "rejected", { lifetime: "notice" })
      assert.strictEqual(yield* ttlOf("real"), -1, "an inbox that was there keeps no expiry")
      yield* t.sendToPeer("made-up", "accepted", { lifetime: "session" })
      assert.strictEqual(yield* ttlOf("made-up"), -1, "a session's inbox does not expire")
    }).pipe(
      Effect.ensuring(Effect.promise(() => deleteKeysWithPrefix(url, prefix))),
      Effect.scoped,
      Effect.provide(layerRedis({ url, prefix })),
    )
  })
})
