import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option, Stream } from "effect"
import { TestClock } from "effect/testing"
import {
  JobScheduler,
  newKey,
  OUTPUT_CHUNKS_PER_SECOND,
  Protocol,
  Store,
  StoreMemory,
  startPeerSession,
  Transport,
  TransportMemory,
} from "../src/index.ts"

// A session passes cancels on to its peer and relays live output within its bound.

const services = JobScheduler.layer({ maxInFlight: 1 }).pipe(
  Layer.provideMerge(StoreMemory.layerMemory),
  Layer.provideMerge(TransportMemory.layerMemory),
)

const sessionId = "5a0f5a4c-3f7e-4d61-9a8e-2a2f0c1d3e4f"
const config = {
  serverId: "s",
  heartbeatMs: 60_000,
  graceMs: 180_000,
  deadlineSlackMs: 30_000,
  leaseMs: 15_000,
  sessionKey: newKey(),
}
const open = startPeerSession(
  {
    peerId: "p",
    sessionId,
    serverIp: null,
    os: "linux",
    distro: "debian",
    hostname: null,
    agentVersion: "test",
  },
  config,
)

const inbox = Effect.gen(function* () {
  const reader = yield* (yield* Transport).inboxReader("p")
  const entries = yield* reader.read("0-0", { count: 100, blockMs: 0 })
  return entries.flatMap((e) => {
    const decoded = Protocol.decodeServerMessage(e.payload)
    return decoded._tag === "Success" ? [decoded.success] : []
  })
})

describe("PeerSession cancels", () => {
  it.effect("asks the peer to stop a delivered ticket, and never sends a cancelled one it held back", () =>
    Effect.gen(function* () {
      const store = yield* Store
      yield* store.replaceCatalog([
        { job_id: "a", name: "A", os: "linux", distro: "debian", command: "sleep 30", timeout_ms: 60_000 },
        { job_id: "b", name: "B", os: "linux", distro: "debian", command: "sleep 30", timeout_ms: 60_000 },
      ])
      const session = yield* open
      const sent = (yield* inbox).filter(Protocol.isJob)
      assert.strictEqual(sent.length, 1, "one in flight, one waits")
      const running = sent[0]!.ticket
      const waiting = String(Number(running) + 1)
      assert.deepStrictEqual(yield* store.ticketState(running), Option.some("delivered"))

      const outcomes = yield* store.cancelTickets({
        tickets: [running, waiting],
        by: "alice",
        reason: "oops",
      })
      assert.deepStrictEqual(
        outcomes.map((o) => o.outcome),
        ["requested", "cancelled"],
      )
      yield* session.cancelRequested([running, waiting, "no-such-ticket"])
      yield* TestClock.adjust(0)
      const messages = yield* inbox
      const cancels = messages.filter(Protocol.isCancel)
      assert.deepStrictEqual(
        cancels.map((c) => [c.ticket, c.reason, c.token]),
        [[running, "cancelled by alice: oops", sent[0]!.token]],
      )
      assert.deepStrictEqual(
        messages.filter(Protocol.isJob).map((j) => j.ticket),
        [running],
        "the cancelled ticket that waited is never sent",
      )

      // The peer reports the job killed.
      const verdict = yield* session.result({
        msg: "result",
        ticket: running,
        peer_id: "p",
        token: sent[0]!.token,
        result: "partial",
        exit_code: null,
        status: "cancelled",
      })
      assert.strictEqual(verdict, "recorded")
      const info = Option.getOrThrow(yield* store.ticketInfo(running))
      assert.strictEqual(info.state, "cancelled")
      assert.strictEqual(info.closeReason, "cancelled by alice: oops")
    }).pipe(Effect.scoped, Effect.provide(services)),
  )
})

describe("PeerSession live output", () => {
  const chunk = (seq: number, data = "x".repeat(100)): Protocol.Output => ({
    msg: "output",
    ticket: "1",
    peer_id: "p",
    token: "t",
    seq,
    stream: "stdout",
    data,
  })

  it.effect("relays chunks to the feed, and drops and counts what is over the session's bound", () =>
    Effect.gen(function* () {
      const transport = yield* Transport
      const session = yield* open
      const feed = yield* transport.subscribe.pipe(
        Stream.map((payload) => Protocol.decodeFeedEvent(payload)),
        Stream.filter((e) => e?.event === "output"),
        Stream.take(OUTPUT_CHUNKS_PER_SECOND + 1),
        Stream.runCollect,
        Effect.forkChild,
      )
      yield* Effect.yieldNow
      yield* TestClock.adjust(1)
      for (let seq = 0; seq < OUTPUT_CHUNKS_PER_SECOND + 4; seq++) yield* session.relayOutput(chunk(seq))
      yield* TestClock.adjust(1_000)
      yield* session.relayOutput({ ...chunk(OUTPUT_CHUNKS_PER_SECOND + 4), dropped: 7 })
      const events = [...(yield* Fiber.join(feed))].flatMap((e) => (e?.event === "output" ? [e] : []))
      assert.strictEqual(events.length, OUTPUT_CHUNKS_PER_SECOND + 1)
      assert.deepStrictEqual(
        events.slice(0, OUTPUT_CHUNKS_PER_SECOND).map((e) => e.seq),
        Array.from({ length: OUTPUT_CHUNKS_PER_SECOND }, (_, i) => i),
      )
      const last = events.at(-1)!
      assert.strictEqual(last.seq, OUTPUT_CHUNKS_PER_SECOND + 4)
      assert.strictEqual(
        last.dropped,
        4 * 100 + 7,
        "the four chunks over the bound, and what the peer dropped",
      )
      assert.strictEqual(last.peer_id, "p")
    }).pipe(Effect.scoped, Effect.provide(services)),
  )
})
