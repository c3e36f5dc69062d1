import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { loginOf, newResult, type StoreIt, ticketsSetup } from "./support.ts"

/** Pruning for retention: what ended before the cutoff goes, whole; what is open stays. */
export const retentionContract = (it: StoreIt) => {
  describe("retention", () => {
    it.effect("prunes finished tickets with their results and ended sessions whole, keeps what is open", () =>
      Effect.gen(function* () {
        const { store, peerId, login, tickets } = yield* ticketsSetup
        const [done, open] = tickets
        yield* store.recordResults([newResult(done!.ticket, peerId, login.sessionId)])
        yield* store.logout({
          peerId,
          sessionId: login.sessionId,
          epoch: 1,
          reason: "peer_logout",
          serverId: "server-a",
        })
        const again = loginOf(peerId)
        yield* store.login(again)
        yield* store.logRejected({
          peerId,
          reason: "unknown token",
          serverId: "server-a",
          serverIp: "1.2.3.4",
        })

        // Nothing ended a day ago.
        const none = yield* store.prune({ before: Date.now() - 86_400_000, batchSize: 500 })
        assert.notStrictEqual(none, "skipped")
        assert.isTrue(Option.isSome(yield* store.ticketState(done!.ticket)))
        assert.strictEqual((yield* store.sessions({ peerId, limit: 10 })).length, 2)

        // Everything that ended before a minute from now, in small batches (other tests' rows too).
        for (;;) {
          const pruned = yield* store.prune({ before: Date.now() + 60_000, batchSize: 2 })
          if (pruned === "skipped") continue
          if (pruned.tickets < 2 && pruned.logRows < 2 && pruned.sessions < 2) break
        }
        assert.isTrue(Option.isNone(yield* store.ticketState(done!.ticket)), "the finished ticket is gone")
        assert.deepStrictEqual(yield* store.results({ peerId, limit: 10 }), [], "with its result")
        assert.deepStrictEqual(
          yield* store.ticketState(open!.ticket),
          Option.some("queued" as const),
          "an open ticket stays",
        )
        const sessions = yield* store.sessions({ peerId, limit: 10 })
        assert.deepStrictEqual(
          sessions.map((s) => [s.sessionId, s.logoutAt]),
          [[again.sessionId, null]],
          "the ended session is gone whole, the open one stays",
        )
        const log = yield* store.registrationLog({ limit: 1_000 })
        assert.deepStrictEqual(
          log.filter((r) => r.peerId === peerId).map((r) => [r.event, r.sessionId]),
          [["login", again.sessionId]],
          "its login and logout rows went together; the refusal went too",
        )
      }),
    )
  })
}
