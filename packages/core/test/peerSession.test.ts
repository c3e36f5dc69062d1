import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer, Option } from "effect"
import { TestClock } from "effect/testing"
import {
  AskTimeout,
  JobScheduler,
  MailboxFull,
  makeTicketQueue,
  newKey,
  type Protocol,
  Store,
  StoreError,
  StoreMemory,
  startPeerSession,
  type Ticket,
  Transport,
  TransportMemory,
} from "../src/index.ts"

// A session's waits are bounded: a stuck session answers, and its mailbox refuses what it cannot hold.

/** The memory store with some of its operations replaced (a database that hangs, or is away). */
const storeWith = (change: (store: Store["Service"]) => Partial<Store["Service"]>) =>
  Layer.effect(
    Store,
    Effect.map(Store, (store: Store["Service"]) => ({ ...store, ...change(store) })),
  ).pipe(Layer.provideMerge(StoreMemory.layerMemory))

/** A session's services over the memory transport and the store given. */
const servicesOver = (store: ReturnType<typeof storeWith>) =>
  JobScheduler.layer({ maxInFlight: 4 }).pipe(
    Layer.provideMerge(store),
    Layer.provideMerge(TransportMemory.layerMemory),
  )

/** The memory store, except that recording a result never finishes (a database that hangs). */
const services = servicesOver(storeWith(() => ({ recordResult: () => Effect.never })))

/** A debian peer's session `sessionId`, ticking every 100 ms. */
const debianSession = (sessionId: string) =>
  startPeerSession(
    {
      peerId: "p",
      sessionId,
      serverIp: null,
      os: "linux",
      distro: "debian",
      hostname: null,
      agentVersion: "test",
    },
    { ...config, heartbeatMs: 100, graceMs: 10_000 },
  )

/** How many jobs (messages with a ticket) peer p's inbox holds. */
const jobsSent = Effect.gen(function* () {
  const reader = yield* (yield* Transport).inboxReader("p")
  const entries = yield* reader.read("0-0", { count: 10, blockMs: 0 })
  return entries.filter((e) => e.payload.includes('"ticket"')).length
})

const config = {
  serverId: "s",
  heartbeatMs: 60_000,
  graceMs: 180_000,
  deadlineSlackMs: 30_000,
  leaseMs: 15_000,
  sessionKey: newKey(),
  askTimeoutMs: 1_000,
  mailboxCapacity: 2,
}

const open = startPeerSession(
  {
    peerId: "p",
    sessionId: "7b0f5a4c-3f7e-4d61-9a8e-2a2f0c1d3e4f",
    serverIp: null,
    os: null,
    distro: null,
    hostname: null,
    agentVersion: "test",
  },
  config,
)

const result = (ticket: string): Protocol.Result => ({
  msg: "result",
  ticket,
  peer_id: "p",
  token: "t",
  result: "out",
})

describe("PeerSession bounds", () => {
  it.effect("a session stuck on a write answers AskTimeout once the ask timeout has passed", () =>
    Effect.gen(function* () {
      const session = yield* open
      const asked = yield* session.result(result("1")).pipe(Effect.flip, Effect.forkChild)
      yield* TestClock.adjust(999)
      assert.isUndefined(asked.pollUnsafe(), "still waiting before the timeout")
      yield* TestClock.adjust(1)
      const error = yield* Fiber.join(asked)
      assert.instanceOf(error, AskTimeout)
    }).pipe(Effect.scoped, Effect.provide(services)),
  )

  it.effect("a full mailbox refuses a result at once with MailboxFull", () =>
    Effect.gen(function* () {
      const session = yield* open
      // The first is taken by the actor, which hangs on it; two more fill the mailbox.
      yield* Effect.forEach(["1", "2", "3"], (t) =>
        session.result(result(t)).pipe(Effect.ignore, Effect.forkChild),
      )
      yield* Effect.yieldNow
      const error = yield* session.result(result("4")).pipe(Effect.flip)
      assert.instanceOf(error, MailboxFull)
    }).pipe(Effect.scoped, Effect.provide(services)),
  )
})

describe("PeerSession when PostgreSQL is away", () => {
  /** The memory store, except that the first marking of deliveries fails as if PostgreSQL were away. */
  const flaky = storeWith((store) => {
    let failures = 1
    return {
      markDelivered: (lease, tickets) =>
        failures-- > 0
          ? Effect.fail(new StoreError({ operation: "markDelivered", message: "away", kind: "unavailable" }))
          : store.markDelivered(lease, tickets),
    }
  })

  it.effect(
    "a job is sent though PostgreSQL could not mark it delivered, once, and marked at the next tick",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog([
          { job_id: "j", name: "J", os: "linux", distro: "debian", command: "true", timeout_ms: 1_000 },
        ])
        yield* debianSession("0b0f5a4c-3f7e-4d61-9a8e-2a2f0c1d3e4f")
        const [ticket] = yield* store.queuedTickets("0b0f5a4c-3f7e-4d61-9a8e-2a2f0c1d3e4f")
        assert.strictEqual(yield* jobsSent, 1, "sent without waiting for PostgreSQL")
        assert.deepStrictEqual(
          yield* store.ticketState(ticket!.ticket),
          Option.some("queued"),
          "not marked yet",
        )
        yield* TestClock.adjust(100)
        assert.deepStrictEqual(
          yield* store.ticketState(ticket!.ticket),
          Option.some("delivered"),
          "marked at the next tick",
        )
        assert.strictEqual(yield* jobsSent, 1, "and not sent again")
      }).pipe(Effect.scoped, Effect.provide(servicesOver(flaky))),
  )
})

describe("PeerSession when PostgreSQL is away for a read of new tickets", () => {
  /** The memory store, except that reads of queued tickets fail while `away.now` is set. */
  const away = { now: false }
  const flakyReads = storeWith((store) => ({
    queuedTickets: (sessionId, after) =>
      away.now
        ? Effect.fail(new StoreError({ operation: "queuedTickets", message: "away", kind: "unavailable" }))
        : store.queuedTickets(sessionId, after),
  }))

  it.effect("a notice's read that fails is let go, and the keep-alive's count reads the tickets again", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const sessionId = "1b0f5a4c-3f7e-4d61-9a8e-2a2f0c1d3e4f"
      const session = yield* debianSession(sessionId)
      away.now = true
      yield* store.createTickets({
        peerId: "p",
        sessionId,
        serverId: "s",
        jobs: [{ job_id: "j", name: "J", os: "linux", distro: "debian", command: "true", timeout_ms: 1_000 }],
      })
      yield* session.refill() // the submission's notice: its read fails
      // Asked after the notice, so answered after it: the session is still serving.
      assert.strictEqual(yield* session.inFlight, 0)
      assert.strictEqual(yield* jobsSent, 0, "nothing read, nothing sent")
      away.now = false
      yield* session.refill(1) // the keep-alive counted one queued ticket
      assert.strictEqual(yield* session.inFlight, 1)
      assert.strictEqual(yield* jobsSent, 1, "read again and sent")
    }).pipe(Effect.scoped, Effect.provide(servicesOver(flakyReads))),
  )
})

describe("the ticket queue", () => {
  const ticket = (id: string): Ticket => ({
    ticket: id,
    peerId: "p",
    sessionId: "s",
    jobId: null,
    name: `job ${id}`,
    os: "linux",
    distro: "debian",
    command: "true",
    timeoutMs: 1_000,
    state: "queued",
    attempts: 0,
    deliveredAt: null,
  })

  it("knows the newest ticket it has had (9 < 10 < 11, as ids from one sequence), and skips known ones", () => {
    const queue = makeTicketQueue([ticket("9")], 2, [ticket("10")])
    assert.strictEqual(queue.newest(), "10")
    assert.strictEqual(queue.add([ticket("9"), ticket("10"), ticket("11"), ticket("8")]), 2)
    assert.strictEqual(queue.newest(), "11")
    assert.strictEqual(queue.waiting(), 3)
    assert.deepStrictEqual(
      queue.takeReady(0).map((t) => t.ticket),
      ["9"],
      "one place left beside the ticket in flight",
    )
    assert.strictEqual(queue.settle("11")?.ticket, undefined, "not in flight")
    assert.strictEqual(queue.waiting(), 1, "but no longer waiting")
    assert.strictEqual(queue.add([ticket("11")]), 1, "a settled ticket is news again only if it comes back")
  })
})
