import { randomUUID } from "node:crypto"
import { assert, describe } from "@effect/vitest"
import { Effect, Option, Result } from "effect"
import { TestClock } from "effect/testing"
import { LeaseLost, Store } from "../../store/Store.ts"
import { loginOf, newResult, type StoreIt, ticketsSetup, unique } from "./support.ts"

/** Tickets: created, submitted, delivered, closed and expired. */
export const ticketContract = (it: StoreIt) => {
  describe("submitted tickets and deadlines", () => {
    it.effect("submits to the open session, or to the next one of an offline peer", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const first = loginOf(peerId)
        yield* store.login(first)
        const jobs = [
          { name: "one", command: "echo 1", timeoutMs: 1_000 },
          { name: "two", command: "echo 2", timeoutMs: 1_000 },
        ]
        const online = yield* store.submitTickets({ peerId, serverId: "api", jobs })
        assert.strictEqual(online.owner?.sessionId, first.sessionId)
        assert.strictEqual(online.owner?.ownerId, "server-a")
        assert.deepStrictEqual(
          online.tickets.map((t) => [t.name, t.os, t.distro, t.sessionId, t.state, t.jobId]),
          [
            ["one", "linux", "debian", first.sessionId, "queued", null],
            ["two", "linux", "debian", first.sessionId, "queued", null],
          ],
        )
        const queued = yield* store.queuedTickets(first.sessionId)
        assert.deepStrictEqual(
          queued.map((t) => t.name),
          ["one", "two"],
        )
        assert.deepStrictEqual(
          (yield* store.queuedTickets(first.sessionId, queued[0]!.ticket)).map((t) => t.name),
          ["two"],
          "only those newer than the one given",
        )
        assert.deepStrictEqual(yield* store.queuedTickets(first.sessionId, queued[1]!.ticket), [])
        assert.deepStrictEqual(
          [...(yield* store.queuedCounts([first.sessionId, randomUUID(), "nope"]))],
          [[first.sessionId, 2]],
        )

        yield* store.logout({ ...first, epoch: 1, reason: "peer_logout" })
        const offline = yield* store.submitTickets({ peerId, serverId: "api", jobs: jobs.slice(0, 1) })
        assert.isUndefined(offline.owner)
        assert.isNull(offline.tickets[0]!.sessionId)
        const second = loginOf(peerId)
        const { adopted } = yield* store.login(second)
        assert.deepStrictEqual(
          adopted.map((t) => t.ticket),
          [...online.tickets, ...offline.tickets].map((t) => t.ticket),
          "the next session gets them all, oldest first",
        )
        const unknown = yield* Effect.flip(
          store.submitTickets({ peerId: unique("ghost"), serverId: "api", jobs }),
        )
        assert.strictEqual(unknown._tag, "StoreError")
      }),
    )

    it.effect("a queued ticket no open session carries goes to its peer's open session", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const first = loginOf(peerId)
        yield* store.login(first)
        const second = loginOf(peerId)
        yield* store.login(second) // replaces the first
        // What a submission that raced the second login leaves behind: a ticket of the closed session.
        const late = {
          job_id: unique("late"),
          name: "late",
          os: "linux",
          distro: "debian",
          command: "true",
          timeout_ms: 1_000,
        }
        yield* store.replaceCatalog([late])
        const [stray] = yield* store.createTickets({
          peerId,
          sessionId: first.sessionId,
          serverId: "api",
          jobs: [late],
        })
        assert.deepStrictEqual([...(yield* store.queuedCounts([second.sessionId]))], [[second.sessionId, 1]])
        const picked = yield* store.queuedTickets(second.sessionId)
        assert.deepStrictEqual(
          picked.map((t) => [t.ticket, t.sessionId]),
          [[stray!.ticket, second.sessionId]],
        )
        assert.deepStrictEqual(
          [...(yield* store.queuedCounts([first.sessionId]))],
          [],
          "a closed session gets none",
        )
      }),
    )

    it.effect("the sweep ends undelivered and unanswered tickets past their deadlines", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const gone = loginOf(peerId)
        yield* store.login(gone)
        const quick = { name: "quick", command: "true", timeoutMs: 1 }
        const [lost, waiting] = (yield* store.submitTickets({
          peerId,
          serverId: "api",
          jobs: [quick, quick],
        })).tickets
        yield* store.markDelivered({ sessionId: gone.sessionId, epoch: 1 }, [lost!.ticket])
        const live = loginOf(unique("peer"))
        yield* store.login(live)
        const [running] = (yield* store.submitTickets({
          peerId: live.peerId,
          serverId: "api",
          jobs: [quick],
        })).tickets
        yield* store.markDelivered({ sessionId: live.sessionId, epoch: 1 }, [running!.ticket])
        yield* store.logout({ ...gone, epoch: 1, reason: "timeout" })
        yield* TestClock.withLive(Effect.sleep("60 millis"))

        const first = yield* store.expireTickets({ deliveryDeadlineMs: 60_000, executionSlackMs: 10 })
        assert.isAtLeast(first.timedOut, 1)
        assert.deepStrictEqual(yield* store.ticketState(lost!.ticket), Option.some("timed_out"))
        assert.deepStrictEqual(yield* store.ticketState(waiting!.ticket), Option.some("queued"))
        assert.deepStrictEqual(
          yield* store.ticketState(running!.ticket),
          Option.some("delivered"),
          "an open session's ticket is its owner's to re-send",
        )
        const second = yield* store.expireTickets({ deliveryDeadlineMs: 10, executionSlackMs: 10 })
        assert.isAtLeast(second.undeliverable, 1)
        assert.deepStrictEqual(yield* store.ticketState(waiting!.ticket), Option.some("undeliverable"))
      }),
    )
  })

  describe("tickets", () => {
    it.effect("creates one queued ticket per job, with distinct ids", () =>
      Effect.gen(function* () {
        const { store, tickets } = yield* ticketsSetup
        assert.strictEqual(tickets.length, 2)
        assert.strictEqual(new Set(tickets.map((t) => t.ticket)).size, 2)
        assert.isTrue(tickets.every((t) => t.state === "queued" && t.attempts === 0))
        yield* store.markDelivered(
          { sessionId: tickets[0]!.sessionId!, epoch: 1 },
          tickets.map((t) => t.ticket),
        )
        assert.deepStrictEqual(yield* store.ticketState(tickets[0]!.ticket), Option.some("delivered"))
      }),
    )

    it.effect("closes given tickets that are still open, and says which", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const [done, open] = tickets
        yield* store.recordResult(newResult(done!.ticket, peerId, login.sessionId))
        const closed = yield* store.closeTickets([done!.ticket, open!.ticket, "no-such-ticket"], "timed_out")
        assert.deepStrictEqual(closed, [open!.ticket])
        assert.deepStrictEqual(yield* store.ticketState(done!.ticket), Option.some("succeeded"))
        assert.deepStrictEqual(yield* store.ticketState(open!.ticket), Option.some("timed_out"))
        assert.deepStrictEqual(yield* store.closeTickets([], "timed_out"), [])
      }),
    )

    it.effect("deliveries for several sessions at once: each lease is judged on its own", () =>
      Effect.gen(function* () {
        const a = yield* ticketsSetup
        const b = yield* ticketsSetup
        const [okA, okB, stale] = yield* Effect.all(
          [
            Effect.result(
              a.store.markDelivered({ sessionId: a.login.sessionId, epoch: 1 }, [a.tickets[0]!.ticket]),
            ),
            Effect.result(
              b.store.markDelivered({ sessionId: b.login.sessionId, epoch: 1 }, [
                b.tickets[0]!.ticket,
                a.tickets[1]!.ticket,
              ]),
            ),
            Effect.result(
              b.store.markDelivered({ sessionId: b.login.sessionId, epoch: 2 }, [b.tickets[1]!.ticket]),
            ),
          ],
          { concurrency: "unbounded" },
        )
        const ids = (r: typeof okA) => Result.map(r, (ts) => ts.map((t) => t.ticket))
        assert.deepStrictEqual(ids(okA), Result.succeed([a.tickets[0]!.ticket]))
        assert.deepStrictEqual(
          ids(okB),
          Result.succeed([b.tickets[0]!.ticket]),
          "another session's ticket is not marked",
        )
        const [marked] = Result.getOrThrow(okA)
        assert.deepStrictEqual(
          { ...marked!, deliveredAt: null },
          { ...a.tickets[0]!, state: "delivered", attempts: 1, deliveredAt: null },
          "the ticket as stored",
        )
        assert.isNotNull(marked!.deliveredAt)
        assert.isTrue(Result.isFailure(stale) && stale.failure instanceof LeaseLost)
        assert.deepStrictEqual(yield* a.store.ticketState(a.tickets[1]!.ticket), Option.some("queued"))
        assert.deepStrictEqual(yield* a.store.ticketState(b.tickets[1]!.ticket), Option.some("queued"))
      }),
    )
  })
}
