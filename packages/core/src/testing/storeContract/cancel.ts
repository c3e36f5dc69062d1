import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { Store } from "../../store/Store.ts"
import { loginOf, newResult, type StoreIt, unique } from "./support.ts"

const jobs = (n: number) =>
  Array.from({ length: n }, (_, i) => ({ name: `job ${i}`, command: "sleep 30", timeoutMs: 60_000 }))

/** Cancelling tickets: at once when not running, a recorded request when delivered. */
export const cancelContract = (it: StoreIt) => {
  describe("cancelled tickets", () => {
    it.effect("queued ends cancelled at once; delivered gets a request; closed and unknown say so", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const login = loginOf(peerId)
        const { epoch } = yield* store.login(login)
        const { tickets } = yield* store.submitTickets({ peerId, serverId: "api", jobs: jobs(3) })
        const [queued, delivered, done] = tickets.map((t) => t.ticket) as [string, string, string]
        yield* store.markDelivered({ sessionId: login.sessionId, epoch }, [delivered, done])
        yield* store.recordResult(newResult(done, peerId, login.sessionId, epoch))
        const ghost = unique("no-such-ticket")

        const outcomes = yield* store.cancelTickets({
          tickets: [queued, delivered, done, ghost],
          by: "alice",
          reason: "wrong host",
        })
        assert.deepStrictEqual(
          outcomes.map((o) => [o.ticket, o.outcome]),
          [
            [queued, "cancelled"],
            [delivered, "requested"],
            [done, "closed"],
            [ghost, "unknown"],
          ],
        )
        const [first, second, third] = outcomes
        assert.strictEqual(first?.outcome === "cancelled" ? first.owner?.sessionId : "", login.sessionId)
        assert.strictEqual(second?.outcome === "requested" ? second.owner.ownerId : "", "server-a")
        assert.strictEqual(third?.outcome === "closed" ? third.state : "", "succeeded")

        const queuedInfo = Option.getOrThrow(yield* store.ticketInfo(queued))
        assert.strictEqual(queuedInfo.state, "cancelled")
        assert.strictEqual(queuedInfo.closeReason, "cancelled by alice: wrong host")
        assert.deepStrictEqual(yield* store.queuedTickets(login.sessionId), [], "never sent")
        const deliveredInfo = Option.getOrThrow(yield* store.ticketInfo(delivered))
        assert.strictEqual(deliveredInfo.state, "delivered", "still running until its peer says")
        assert.strictEqual(deliveredInfo.cancelReason, "cancelled by alice: wrong host")
        assert.strictEqual(Option.getOrThrow(yield* store.ticketInfo(done)).result?.status, "succeeded")

        assert.deepStrictEqual(
          [...(yield* store.cancelRequests(login.sessionId, [queued, delivered, done, ghost]))].sort((a, b) =>
            a.ticket.localeCompare(b.ticket),
          ),
          [
            { ticket: queued, state: "cancelled", reason: "cancelled by alice: wrong host" },
            { ticket: delivered, state: "delivered", reason: "cancelled by alice: wrong host" },
            { ticket: done, state: "succeeded", reason: null },
          ].sort((a, b) => a.ticket.localeCompare(b.ticket)),
        )
        assert.deepStrictEqual(yield* store.cancelRequests(loginOf("other").sessionId, [delivered]), [])

        // The peer reports the job killed: the ticket ends cancelled with who and why.
        const verdict = yield* store.recordResult({
          ...newResult(delivered, peerId, login.sessionId, epoch),
          status: "cancelled",
          exitCode: null,
          output: "started\n",
        })
        assert.strictEqual(verdict, "recorded")
        const killed = Option.getOrThrow(yield* store.ticketInfo(delivered))
        assert.strictEqual(killed.state, "cancelled")
        assert.strictEqual(killed.closeReason, "cancelled by alice: wrong host")
        assert.strictEqual(killed.result?.status, "cancelled")
        assert.strictEqual(killed.result?.output, "started\n", "the output so far is kept")
      }),
    )

    it.effect("a result that comes before the kill keeps its real outcome", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const login = loginOf(peerId)
        const { epoch } = yield* store.login(login)
        const { tickets } = yield* store.submitTickets({ peerId, serverId: "api", jobs: jobs(1) })
        const ticket = tickets[0]!.ticket
        yield* store.markDelivered({ sessionId: login.sessionId, epoch }, [ticket])
        const [outcome] = yield* store.cancelTickets({ tickets: [ticket], by: "bob", reason: "late" })
        assert.strictEqual(outcome?.outcome, "requested")
        assert.strictEqual(
          yield* store.recordResult({
            ...newResult(ticket, peerId, login.sessionId, epoch),
            status: "failed",
            exitCode: 3,
          }),
          "recorded",
        )
        const info = Option.getOrThrow(yield* store.ticketInfo(ticket))
        assert.strictEqual(info.state, "failed")
        assert.isNull(info.closeReason)
        const [again] = yield* store.cancelTickets({ tickets: [ticket], by: "bob", reason: "late" })
        assert.deepStrictEqual(again, { ticket, outcome: "closed", peerId, state: "failed" })
      }),
    )

    it.effect("a delivered ticket no open session carries ends cancelled at once", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const login = loginOf(peerId)
        const { epoch } = yield* store.login(login)
        const { tickets } = yield* store.submitTickets({ peerId, serverId: "api", jobs: jobs(1) })
        const ticket = tickets[0]!.ticket
        yield* store.markDelivered({ sessionId: login.sessionId, epoch }, [ticket])
        yield* store.logout({ ...login, epoch, reason: "peer_shutdown" })
        const [outcome] = yield* store.cancelTickets({ tickets: [ticket], by: "carol", reason: "offline" })
        assert.strictEqual(outcome?.outcome, "cancelled")
        assert.isUndefined(outcome?.outcome === "cancelled" ? outcome.owner : "x")
        assert.strictEqual(Option.getOrThrow(yield* store.ticketState(ticket)), "cancelled")
        // Its peer's answer, should it come, is refused: the ticket is closed.
        const second = loginOf(peerId)
        const next = yield* store.login(second)
        assert.deepStrictEqual(next.adopted, [], "a cancelled ticket is not carried over")
      }),
    )

    it.effect("a run: pending and queued end cancelled, delivered get a request, ended ones are left", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerIds = [unique("a"), unique("b"), unique("c"), unique("d")]
        const logins = peerIds.map((peerId) => loginOf(peerId))
        const epochs: Array<number> = []
        for (const login of logins) epochs.push((yield* store.login(login)).epoch)
        const created = yield* store.createRun({
          target: { peers: peerIds },
          name: "long",
          command: "sleep 30",
          timeoutMs: 60_000,
          maxConcurrency: { count: 3 },
          deliverWithinMs: 60_000,
          createdBy: "test",
        })
        const runId = created.runId!
        const open = created.tickets.filter((t) => t.state === "queued").map((t) => t.ticket)
        const [done, running, queued] = open as [string, string, string]
        assert.strictEqual(open.length, 3)
        assert.strictEqual(created.tickets.filter((t) => t.state === "pending").length, 1, "the fourth waits")
        const at = (t: string) => created.tickets.findIndex((x) => x.ticket === t)
        yield* store.markDelivered({ sessionId: logins[at(done)]!.sessionId, epoch: epochs[at(done)]! }, [
          done,
        ])
        yield* store.markDelivered(
          { sessionId: logins[at(running)]!.sessionId, epoch: epochs[at(running)]! },
          [running],
        )
        yield* store.recordResult(
          newResult(done, peerIds[at(done)]!, logins[at(done)]!.sessionId, epochs[at(done)]),
        )

        const outcomes = Option.getOrThrow(yield* store.cancelRun({ runId, by: "dave", reason: "stop" }))
        const byOutcome = (o: string) => outcomes.filter((x) => x.outcome === o).length
        assert.strictEqual(outcomes.length, 3, "its open tickets only")
        assert.strictEqual(byOutcome("requested"), 1)
        assert.strictEqual(byOutcome("cancelled"), 2, "the queued one and the pending one")
        assert.strictEqual(outcomes.find((o) => o.outcome === "requested")?.ticket, running)
        assert.strictEqual(Option.getOrThrow(yield* store.ticketState(queued)), "cancelled")
        assert.strictEqual(Option.getOrThrow(yield* store.ticketState(done)), "succeeded")
        const info = yield* store.runInfo(runId)
        assert.deepStrictEqual(info?.counts, { succeeded: 1, delivered: 1, cancelled: 2 })
        assert.isTrue(Option.isNone(yield* store.cancelRun({ runId: "r999999999", by: "dave", reason: "x" })))
      }),
    )
  })
}
