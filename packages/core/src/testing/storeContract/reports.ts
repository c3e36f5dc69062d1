import { assert, describe } from "@effect/vitest"
import { Effect } from "effect"
import { Store } from "../../store/Store.ts"
import { loginOf, type StoreIt, unique } from "./support.ts"

/** What the registration log and the session reports read back. */
export const reportContract = (it: StoreIt) => {
  describe("registration log", () => {
    it.effect("pairs a login with its logout, once", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const login = loginOf(peerId)
        yield* store.login(login)
        const open = yield* store.sessions({ peerId, limit: 10 })
        assert.strictEqual(open.length, 1)
        assert.isNull(open[0]!.logoutAt)
        assert.isNull(open[0]!.logoutReason)
        assert.isFalse(
          yield* store.logout({
            peerId,
            sessionId: login.sessionId,
            epoch: 2,
            reason: "fenced",
            serverId: "server-b",
          }),
          "a logout naming another epoch is refused",
        )
        assert.isTrue(
          yield* store.logout({
            peerId,
            sessionId: login.sessionId,
            epoch: 1,
            reason: "peer_logout",
            serverId: "server-a",
          }),
        )
        assert.isFalse(
          yield* store.logout({
            peerId,
            sessionId: login.sessionId,
            epoch: 1,
            reason: "timeout",
            serverId: "server-a",
          }),
        )
        const [closed] = yield* store.sessions({ peerId, limit: 10 })
        assert.strictEqual(closed!.logoutReason, "peer_logout")
        assert.isNotNull(closed!.logoutAt)
        assert.isAtLeast(closed!.durationMs, 0)
        assert.strictEqual(closed!.durationMs, closed!.logoutAt! - closed!.loginAt)
      }),
    )

    it.effect("logs rejections and shutdowns with their reasons", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const reason = unique("Upgrade server")
        yield* store.logRejected({
          peerId,
          reason: "unknown token",
          serverId: "server-a",
          serverIp: "1.2.3.4",
        })
        yield* store.logShutdown({ serverId: "server-a", reason })
        const log = yield* store.registrationLog({ limit: 50 })
        const rejected = log.find((r) => r.peerId === peerId)
        assert.strictEqual(rejected?.event, "rejected")
        assert.strictEqual(rejected?.reason, "unknown token")
        assert.strictEqual(rejected?.serverIp, "1.2.3.4")
        assert.isNull(rejected?.sessionId)
        const shutdown = log.find((r) => r.event === "shutdown" && r.reason === reason)
        assert.strictEqual(shutdown?.serverId, "server-a")
        assert.isAbove(
          log.findIndex((r) => r.peerId === peerId),
          log.indexOf(shutdown!),
          "newest first",
        )
      }),
    )

    it.effect("keeps several sessions of one peer apart", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const first = loginOf(peerId)
        const second = loginOf(peerId)
        yield* store.login(first)
        yield* store.logout({
          peerId,
          sessionId: first.sessionId,
          epoch: 1,
          reason: "server_shutdown",
          serverId: "server-a",
        })
        yield* store.login(second)
        const sessions = yield* store.sessions({ peerId, limit: 10 })
        assert.strictEqual(sessions.length, 2)
        const byId = new Map(sessions.map((s) => [s.sessionId, s]))
        assert.strictEqual(byId.get(first.sessionId)?.logoutReason, "server_shutdown")
        assert.isNull(byId.get(second.sessionId)?.logoutAt)
      }),
    )
  })
}
