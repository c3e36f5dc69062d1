import { randomUUID } from "node:crypto"
import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { LeaseLost } from "../../store/Store.ts"
import { loginOf, newResult, type StoreIt, ticketsSetup, unique } from "./support.ts"

/** Results: each recorded once, ending its ticket. */
export const resultContract = (it: StoreIt) => {
  describe("results", () => {
    it.effect("records a result once; its ticket ends succeeded", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const ticket = tickets[0]!.ticket
        assert.strictEqual(yield* store.recordResult(newResult(ticket, peerId, login.sessionId)), "recorded")
        assert.deepStrictEqual(yield* store.ticketState(ticket), Option.some("succeeded"))
        const again = { ...newResult(ticket, peerId, login.sessionId), output: "second" }
        assert.strictEqual(yield* store.recordResult(again), "duplicate")
        const rows = (yield* store.results({ peerId, limit: 10 })).filter((r) => r.ticket === ticket)
        assert.strictEqual(rows.length, 1)
        assert.strictEqual(rows[0]!.output, "file1 file2")
        assert.strictEqual(rows[0]!.jobName, tickets[0]!.name)
      }),
    )

    it.effect("one result after another, and a batch where a refused copy comes first", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const [a, b] = tickets
        assert.strictEqual(
          yield* store.recordResult(newResult(a!.ticket, peerId, login.sessionId)),
          "recorded",
        )
        assert.strictEqual(
          yield* store.recordResult(newResult(a!.ticket, peerId, login.sessionId)),
          "duplicate",
        )
        assert.strictEqual(
          yield* store.recordResult(newResult(b!.ticket, peerId, login.sessionId)),
          "recorded",
        )
        const other = yield* ticketsSetup
        const mine = yield* ticketsSetup
        assert.deepStrictEqual(
          yield* store.recordResults([
            newResult(other.tickets[0]!.ticket, mine.peerId, mine.login.sessionId),
            newResult(other.tickets[0]!.ticket, other.peerId, other.login.sessionId),
            newResult(mine.tickets[0]!.ticket, mine.peerId, mine.login.sessionId),
            newResult(other.tickets[0]!.ticket, other.peerId, other.login.sessionId),
          ]),
          ["foreign_ticket", "recorded", "recorded", "duplicate"],
          "a copy refused does not count as the first",
        )
      }),
    )

    it.effect("a failed or timed-out result ends its ticket failed or timed_out", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const [a, b] = tickets
        yield* store.recordResult({
          ...newResult(a!.ticket, peerId, login.sessionId),
          status: "failed",
          exitCode: 2,
        })
        yield* store.recordResult({
          ...newResult(b!.ticket, peerId, login.sessionId),
          status: "timed_out",
          exitCode: null,
        })
        assert.deepStrictEqual(yield* store.ticketState(a!.ticket), Option.some("failed"))
        assert.deepStrictEqual(yield* store.ticketState(b!.ticket), Option.some("timed_out"))
      }),
    )

    it.effect("refuses results for unknown tickets and tickets of another peer or session", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const ticket = tickets[0]!.ticket
        assert.strictEqual(
          yield* store.recordResult(newResult("no-such-ticket", peerId, login.sessionId)),
          "unknown_ticket",
        )
        assert.strictEqual(
          yield* store.recordResult(newResult(ticket, unique("thief"), login.sessionId)),
          "foreign_ticket",
        )
        const other = loginOf(unique("other"))
        yield* store.login(other)
        assert.strictEqual(
          yield* store.recordResult(newResult(ticket, other.peerId, other.sessionId)),
          "foreign_ticket",
        )
        assert.instanceOf(
          yield* Effect.flip(store.recordResult(newResult(ticket, peerId, randomUUID()))),
          LeaseLost,
          "no session, no write",
        )
        assert.deepStrictEqual(yield* store.ticketState(ticket), Option.some("queued"))
      }),
    )

    it.effect("concurrent copies of one result record it exactly once", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const ticket = tickets[0]!.ticket
        const outcomes = yield* Effect.all(
          Array.from({ length: 8 }, () => store.recordResult(newResult(ticket, peerId, login.sessionId))),
          { concurrency: "unbounded" },
        )
        assert.strictEqual(outcomes.filter((o) => o === "recorded").length, 1)
        assert.strictEqual(outcomes.filter((o) => o === "duplicate").length, 7)
      }),
    )

    it.effect("records a batch of results in one go, with the outcome of each", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const [first, second] = tickets
        const other = yield* ticketsSetup
        yield* store.closeTickets([second!.ticket], "undeliverable")
        const outcomes = yield* store.recordResults([
          newResult(first!.ticket, peerId, login.sessionId),
          { ...newResult(first!.ticket, peerId, login.sessionId), output: "again" },
          newResult(second!.ticket, peerId, login.sessionId),
          newResult("no-such-ticket", peerId, login.sessionId),
          newResult(other.tickets[0]!.ticket, peerId, login.sessionId),
          newResult(other.tickets[0]!.ticket, other.peerId, other.login.sessionId, 2),
          newResult(other.tickets[1]!.ticket, other.peerId, other.login.sessionId),
        ])
        assert.deepStrictEqual(outcomes, [
          "recorded",
          "duplicate",
          "ticket_closed",
          "unknown_ticket",
          "foreign_ticket",
          "lease_lost",
          "recorded",
        ])
        assert.deepStrictEqual(yield* store.ticketState(first!.ticket), Option.some("succeeded"))
        assert.deepStrictEqual(yield* store.ticketState(other.tickets[0]!.ticket), Option.some("queued"))
        const rows = (yield* store.results({ peerId, limit: 10 })).filter((r) => r.ticket === first!.ticket)
        assert.deepStrictEqual(
          rows.map((r) => r.output),
          ["file1 file2"],
        )
        assert.deepStrictEqual(yield* store.recordResults([]), [])
      }),
    )

    it.effect("a ticket that ended without a result takes none", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        yield* store.closeTickets([tickets[1]!.ticket], "undeliverable")
        assert.strictEqual(
          yield* store.recordResult(newResult(tickets[1]!.ticket, peerId, login.sessionId)),
          "ticket_closed",
        )
      }),
    )
  })
}
