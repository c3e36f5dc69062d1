import { createHash, randomUUID } from "node:crypto"
import { assert, describe, layer } from "@effect/vitest"
import { Effect, type Layer, Option } from "effect"
import { TestClock } from "effect/testing"
import { type CatalogJob, type Login, Store } from "../store/Store.ts"

/**
 * The behaviour every Store layer must have. Run by core against the in-memory layer and by the
 * server against PostgreSQL. Tests share one layer (one database), so each uses its own peer ids.
 */
export const storeContract = (name: string, storeLayer: Layer.Layer<Store, unknown>) =>
  layer(storeLayer, { timeout: 60_000 })(`Store contract (${name})`, (it) => {
    const unique = (label: string) => `${label}-${randomUUID().slice(0, 8)}`
    const hashOf = (secret: string) => new Uint8Array(createHash("sha256").update(secret).digest())
    const loginOf = (peerId: string, overrides: Partial<Login> = {}): Login => ({
      peerId,
      sessionId: randomUUID(),
      serverId: "server-a",
      serverIp: "10.0.0.1",
      os: "linux",
      distro: "debian",
      hostname: "host",
      agentVersion: "test",
      ...overrides,
    })
    const job = (jobId: string, distro: string, command = "echo hi"): CatalogJob => ({
      job_id: jobId,
      name: `Job ${jobId}`,
      os: "linux",
      distro,
      command,
      timeout_ms: 5_000,
    })
    const newResult = (ticket: string, peerId: string, sessionId: string) => ({
      ticket,
      peerId,
      sessionId,
      serverId: "server-a",
      status: "succeeded" as const,
      exitCode: 0,
      output: "file1 file2",
      truncated: false,
      startedAt: Date.now() - 5,
      finishedAt: Date.now(),
    })

    describe("tokens", () => {
      it.effect("stores a token by hash, finds it while active, and not after revocation", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const secret = unique("secret")
          const prefix = unique("pfx")
          const created = yield* store.createToken({ name: "ci", prefix, hash: hashOf(secret) })
          assert.strictEqual(created.name, "ci")
          assert.isNull(created.revokedAt)
          const found = yield* store.findActiveToken(hashOf(secret))
          assert.isTrue(Option.isSome(found))
          assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(`${secret}x`))))
          const listed = (yield* store.listTokens).find((t) => t.tokenId === created.tokenId)
          assert.strictEqual(listed?.prefix, prefix)
          assert.notProperty(listed, "hash")
          assert.strictEqual(yield* store.revokeToken(prefix), 1)
          assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
          assert.strictEqual(yield* store.revokeToken(unique("nothing")), 0)
        }),
      )

      it.effect("revokes by numeric id too", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const secret = unique("secret")
          const created = yield* store.createToken({ name: "x", prefix: unique("p"), hash: hashOf(secret) })
          assert.strictEqual(yield* store.revokeToken(String(created.tokenId)), 1)
          assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
        }),
      )
    })

    describe("catalog", () => {
      it.effect("gives a peer only the enabled jobs of its os and distro", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const distro = unique("distro")
          const other = unique("other")
          yield* store.replaceCatalog([job("a", distro), job("b", other), job("c", distro)])
          const mine = yield* store.jobsFor("linux", distro)
          assert.deepStrictEqual(mine.map((j) => j.job_id).sort(), ["a", "c"])
          assert.deepStrictEqual(yield* store.jobsFor("windows", distro), [])
          yield* store.replaceCatalog([job("b", other, "uname -a")])
          assert.deepStrictEqual(yield* store.jobsFor("linux", distro), [])
          const b = yield* store.jobsFor("linux", other)
          assert.deepStrictEqual(
            b.map((j) => j.command),
            ["uname -a"],
          )
        }),
      )
    })

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
          assert.isTrue(
            yield* store.logout({
              peerId,
              sessionId: login.sessionId,
              reason: "peer_logout",
              serverId: "server-a",
            }),
          )
          assert.isFalse(
            yield* store.logout({
              peerId,
              sessionId: login.sessionId,
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

    describe("server instances", () => {
      // An instance is lost once it has not said it is alive for DEAD_AFTER_MS; waitUntilLost waits
      // longer than that, on the real clock (which both stores use). Every close call sees the lost
      // instances of every test (one shared database), so each test uses its own server ids and
      // looks only at its own sessions.
      const DEAD_AFTER_MS = 50
      const waitUntilLost = TestClock.withLive(Effect.sleep("120 millis"))
      const openSession = (serverId: string) =>
        Effect.gen(function* () {
          const store = yield* Store
          const login = loginOf(unique("peer"), { serverId })
          yield* store.login(login)
          return login
        })
      const closeLost = (reason = unique("server_lost")) =>
        Effect.gen(function* () {
          const store = yield* Store
          const byServerId = unique("closer")
          const closed = yield* store.closeSessionsOfLostInstances({
            deadAfterMs: DEAD_AFTER_MS,
            reason,
            byServerId,
          })
          return { closed, reason, byServerId }
        })
      type SessionRef = { readonly peerId: string; readonly sessionId: string }
      const bySession = (refs: ReadonlyArray<SessionRef>) =>
        refs
          .map((r) => ({ peerId: r.peerId, sessionId: r.sessionId }))
          .sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0))
      /** The closed sessions that are among `logins`, in session order. */
      const mine = (closed: ReadonlyArray<SessionRef>, logins: ReadonlyArray<Login>) =>
        bySession(closed.filter((c) => logins.some((l) => l.sessionId === c.sessionId)))

      it.effect(
        "logs out a lost instance's open sessions with the reason and cancels their open tickets",
        () =>
          Effect.gen(function* () {
            const store = yield* Store
            const serverId = unique("lost")
            yield* store.instanceAlive(serverId)
            const open = yield* openSession(serverId)
            const other = yield* openSession(serverId)
            const done = yield* openSession(serverId)
            yield* store.logout({
              peerId: done.peerId,
              sessionId: done.sessionId,
              reason: "peer_logout",
              serverId,
            })
            const distro = unique("distro")
            yield* store.replaceCatalog([
              job(unique("queued"), distro),
              job(unique("delivered"), distro),
              job(unique("finished"), distro),
            ])
            const jobs = yield* store.jobsFor("linux", distro)
            const [queued, delivered, finished] = yield* store.createTickets({
              peerId: open.peerId,
              sessionId: open.sessionId,
              serverId,
              jobs,
            })
            yield* store.markDelivered([delivered!.ticket, finished!.ticket])
            yield* store.recordResult(newResult(finished!.ticket, open.peerId, open.sessionId))
            const [doneTicket] = yield* store.createTickets({
              peerId: done.peerId,
              sessionId: done.sessionId,
              serverId,
              jobs: jobs.slice(0, 1),
            })

            yield* waitUntilLost
            const { closed, reason, byServerId } = yield* closeLost()
            assert.deepStrictEqual(mine(closed, [open, other, done]), bySession([open, other]))

            const [session] = yield* store.sessions({ peerId: open.peerId, limit: 10 })
            assert.strictEqual(session?.logoutReason, reason)
            assert.isNotNull(session?.logoutAt)
            assert.strictEqual(session?.serverId, serverId, "the session still names the instance it was on")
            const logouts = (yield* store.registrationLog({ limit: 1_000 })).filter(
              (r) => r.event === "logout" && r.sessionId === open.sessionId,
            )
            assert.strictEqual(logouts.length, 1)
            assert.strictEqual(logouts[0]!.serverId, byServerId)
            assert.strictEqual(logouts[0]!.peerId, open.peerId)

            assert.deepStrictEqual(yield* store.ticketState(queued!.ticket), Option.some("cancelled"))
            assert.deepStrictEqual(yield* store.ticketState(delivered!.ticket), Option.some("cancelled"))
            assert.deepStrictEqual(yield* store.ticketState(finished!.ticket), Option.some("succeeded"))
            assert.deepStrictEqual(
              yield* store.ticketState(doneTicket!.ticket),
              Option.some("queued"),
              "a session logged out before is not touched",
            )
            const [doneSession] = yield* store.sessions({ peerId: done.peerId, limit: 10 })
            assert.strictEqual(doneSession?.logoutReason, "peer_logout")

            const again = yield* closeLost()
            assert.deepStrictEqual(mine(again.closed, [open, other, done]), [], "closed once only")
          }),
      )

      it.effect("leaves alone instances that are alive, stopped cleanly, or never said they were alive", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const lost = unique("lost")
          const alive = unique("alive")
          const stopped = unique("stopped")
          const unknown = unique("unknown")
          for (const serverId of [lost, alive, stopped]) yield* store.instanceAlive(serverId)
          const logins = [
            yield* openSession(lost),
            yield* openSession(alive),
            yield* openSession(stopped),
            yield* openSession(unknown),
          ]
          yield* store.instanceStopped(stopped)
          yield* waitUntilLost
          yield* store.instanceAlive(alive)
          const { closed } = yield* closeLost()
          assert.deepStrictEqual(mine(closed, logins), bySession(logins.slice(0, 1)))
          const stillOpen = logins.slice(1)
          for (const login of stillOpen) {
            const [session] = yield* store.sessions({ peerId: login.peerId, limit: 10 })
            assert.isNull(session?.logoutAt, login.serverId)
          }
          assert.deepStrictEqual(yield* store.closedSessions(stillOpen.map((l) => l.sessionId)), [])
        }),
      )

      it.effect("an instance that says it is alive again is no longer lost, even after stopping", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const back = unique("back")
          const restarted = unique("restarted")
          yield* store.instanceAlive(back)
          yield* store.instanceAlive(restarted)
          yield* store.instanceStopped(restarted)
          yield* store.instanceAlive(restarted)
          const backLogin = yield* openSession(back)
          const restartedLogin = yield* openSession(restarted)
          yield* waitUntilLost
          yield* store.instanceAlive(back)
          const first = yield* closeLost()
          assert.deepStrictEqual(
            mine(first.closed, [backLogin, restartedLogin]),
            bySession([restartedLogin]),
            "saying it is alive again cleared the clean stop",
          )
          assert.deepStrictEqual(yield* store.closedSessions([backLogin.sessionId]), [])
        }),
      )

      it.effect("closedSessions returns exactly the given sessions that have a logout", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const serverId = unique("server")
          const a = yield* openSession(serverId)
          const b = yield* openSession(serverId)
          const c = yield* openSession(serverId)
          yield* store.logout({ peerId: a.peerId, sessionId: a.sessionId, reason: "peer_logout", serverId })
          yield* store.logout({ peerId: c.peerId, sessionId: c.sessionId, reason: "timeout", serverId })
          assert.deepStrictEqual(yield* store.closedSessions([]), [])
          const asked = [a.sessionId, b.sessionId, randomUUID(), "not-a-uuid", "", c.sessionId]
          assert.deepStrictEqual(
            [...(yield* store.closedSessions(asked))].sort(),
            [a.sessionId, c.sessionId].sort(),
          )
        }),
      )

      it.effect("two closers at once log each session out once", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const serverId = unique("lost")
          yield* store.instanceAlive(serverId)
          const logins = [
            yield* openSession(serverId),
            yield* openSession(serverId),
            yield* openSession(serverId),
          ]
          yield* waitUntilLost
          const results = yield* Effect.all(
            Array.from({ length: 4 }, () => closeLost()),
            { concurrency: "unbounded" },
          )
          const all = mine(
            results.flatMap((r) => r.closed),
            logins,
          )
          assert.deepStrictEqual(all, bySession(logins), "every session closed, by exactly one closer")
          const logouts = (yield* store.registrationLog({ limit: 1_000 })).filter(
            (r) => r.event === "logout" && logins.some((l) => l.sessionId === r.sessionId),
          )
          assert.strictEqual(logouts.length, logins.length)
          for (const logout of logouts) {
            const closer = results.find((r) => r.closed.some((c) => c.sessionId === logout.sessionId))
            assert.strictEqual(logout.serverId, closer?.byServerId, "the closer that wrote it returned it")
          }
        }),
      )
    })

    describe("tickets and results", () => {
      const setup = Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("peer")
        const login = loginOf(peerId)
        yield* store.login(login)
        yield* store.replaceCatalog([job("list", "debian", "ls -al"), job("mem", "debian", "free -h")])
        const jobs = yield* store.jobsFor("linux", "debian")
        const tickets = yield* store.createTickets({
          peerId,
          sessionId: login.sessionId,
          serverId: "server-a",
          jobs,
        })
        return { store, peerId, login, tickets }
      })

      it.effect("creates one queued ticket per job, with distinct ids", () =>
        Effect.gen(function* () {
          const { store, tickets } = yield* setup
          assert.strictEqual(tickets.length, 2)
          assert.strictEqual(new Set(tickets.map((t) => t.ticket)).size, 2)
          assert.isTrue(tickets.every((t) => t.state === "queued"))
          yield* store.markDelivered(tickets.map((t) => t.ticket))
          assert.deepStrictEqual(yield* store.ticketState(tickets[0]!.ticket), Option.some("delivered"))
        }),
      )

      it.effect("records a result once; its ticket ends succeeded", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
          const ticket = tickets[0]!.ticket
          assert.strictEqual(
            yield* store.recordResult(newResult(ticket, peerId, login.sessionId)),
            "recorded",
          )
          assert.deepStrictEqual(yield* store.ticketState(ticket), Option.some("succeeded"))
          const again = { ...newResult(ticket, peerId, login.sessionId), output: "second" }
          assert.strictEqual(yield* store.recordResult(again), "duplicate")
          const rows = (yield* store.results({ peerId, limit: 10 })).filter((r) => r.ticket === ticket)
          assert.strictEqual(rows.length, 1)
          assert.strictEqual(rows[0]!.output, "file1 file2")
          assert.strictEqual(rows[0]!.jobName, tickets[0]!.name)
        }),
      )

      it.effect("a failed or timed-out result ends its ticket failed or timed_out", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
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
          const { store, peerId, login, tickets } = yield* setup
          const ticket = tickets[0]!.ticket
          assert.strictEqual(
            yield* store.recordResult(newResult("no-such-ticket", peerId, login.sessionId)),
            "unknown_ticket",
          )
          assert.strictEqual(
            yield* store.recordResult(newResult(ticket, unique("thief"), login.sessionId)),
            "foreign_ticket",
          )
          assert.strictEqual(
            yield* store.recordResult(newResult(ticket, peerId, randomUUID())),
            "foreign_ticket",
          )
          assert.deepStrictEqual(yield* store.ticketState(ticket), Option.some("queued"))
        }),
      )

      it.effect("concurrent copies of one result record it exactly once", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
          const ticket = tickets[0]!.ticket
          const outcomes = yield* Effect.all(
            Array.from({ length: 8 }, () => store.recordResult(newResult(ticket, peerId, login.sessionId))),
            { concurrency: "unbounded" },
          )
          assert.strictEqual(outcomes.filter((o) => o === "recorded").length, 1)
          assert.strictEqual(outcomes.filter((o) => o === "duplicate").length, 7)
        }),
      )

      it.effect("closes given tickets that are still open, and says which", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
          const [done, open] = tickets
          yield* store.recordResult(newResult(done!.ticket, peerId, login.sessionId))
          const closed = yield* store.closeTickets(
            [done!.ticket, open!.ticket, "no-such-ticket"],
            "timed_out",
          )
          assert.deepStrictEqual(closed, [open!.ticket])
          assert.deepStrictEqual(yield* store.ticketState(done!.ticket), Option.some("succeeded"))
          assert.deepStrictEqual(yield* store.ticketState(open!.ticket), Option.some("timed_out"))
          assert.deepStrictEqual(yield* store.closeTickets([], "timed_out"), [])
        }),
      )

      it.effect("closes a session's open tickets, and only those", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
          yield* store.recordResult(newResult(tickets[0]!.ticket, peerId, login.sessionId))
          assert.strictEqual(yield* store.closeOpenTickets(login.sessionId, "cancelled"), 1)
          assert.deepStrictEqual(yield* store.ticketState(tickets[0]!.ticket), Option.some("succeeded"))
          assert.deepStrictEqual(yield* store.ticketState(tickets[1]!.ticket), Option.some("cancelled"))
          assert.strictEqual(
            yield* store.recordResult(newResult(tickets[1]!.ticket, peerId, login.sessionId)),
            "ticket_closed",
            "a ticket that ended takes no result",
          )
        }),
      )
    })
  })
