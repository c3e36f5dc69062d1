import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import {
  CatalogStore,
  ReportStore,
  ResultStore,
  SessionStore,
  Store,
  TicketStore,
  TokenStore,
} from "../../store/Store.ts"
import { hashOf, job, loginOf, newResult, type StoreIt, unique } from "./support.ts"

/** The narrow stores a layer provides work on the same data as its Store. */
export const compositionContract = (it: StoreIt) => {
  describe("narrow stores", () => {
    it.effect("each narrow store sees what the others and the Store wrote", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const tokens = yield* TokenStore
        const catalog = yield* CatalogStore
        const sessions = yield* SessionStore
        const tickets = yield* TicketStore
        const results = yield* ResultStore
        const reports = yield* ReportStore
        const secret = unique("secret")
        yield* tokens.createToken({ name: "narrow", prefix: unique("pfx"), hash: hashOf(secret) })
        assert.isTrue(Option.isSome(yield* store.findActiveToken(hashOf(secret))))
        const distro = unique("distro")
        yield* catalog.replaceCatalog([job(unique("job"), distro)])
        const jobs = yield* store.jobsFor("linux", distro)
        assert.strictEqual(jobs.length, 1)
        const peerId = unique("peer")
        const login = loginOf(peerId, { distro })
        yield* sessions.login(login)
        assert.strictEqual(Option.getOrThrow(yield* store.sessionOf(peerId)).sessionId, login.sessionId)
        const [ticket] = yield* tickets.createTickets({
          peerId,
          sessionId: login.sessionId,
          serverId: login.serverId,
          jobs,
        })
        assert.strictEqual(
          yield* results.recordResult(newResult(ticket!.ticket, peerId, login.sessionId)),
          "recorded",
        )
        assert.deepStrictEqual(yield* store.ticketState(ticket!.ticket), Option.some("succeeded"))
        assert.deepStrictEqual(
          (yield* reports.results({ peerId, limit: 10 })).map((r) => r.ticket),
          [ticket!.ticket],
        )
        assert.deepStrictEqual(
          (yield* reports.sessions({ peerId, limit: 10 })).map((s) => s.sessionId),
          [login.sessionId],
        )
      }),
    )
  })
}
