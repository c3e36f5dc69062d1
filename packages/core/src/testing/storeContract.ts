import { createHash, randomUUID } from "node:crypto"
import { assert, describe, layer } from "@effect/vitest"
import { Effect, type Layer, Option, Result } from "effect"
import { TestClock } from "effect/testing"
import { type CatalogJob, LeaseLost, type Login, Store } from "../store/Store.ts"

/**
 * The behaviour every Store layer must have. Run by core against the in-memory layer and by the
 * server against PostgreSQL. Tests share one layer (one database), so each uses its own peer ids.
 */
export const storeContract = (name: string, storeLayer: Layer.Layer<Store, unknown>) =>
  layer(storeLayer, { timeout: 60_000 })(`Store contract (${name})`, (it) => {
    const unique = (label: string) => `${label}-${randomUUID().slice(0, 8)}`
    const hashOf = (secret: string) => new Uint8Array(createHash("sha256").update(secret).digest())
    const LEASE_MS = 60_000
    const loginOf = (
      peerId: string,
      overrides: Partial<Login & { leaseMs: number }> = {},
    ): Login & { leaseMs: number } => ({
      leaseMs: LEASE_MS,
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
    const newResult = (ticket: string, peerId: string, sessionId: string, epoch = 1) => ({
      ticket,
      peerId,
      sessionId,
      epoch,
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

      it.effect("gives jobs for any os or distro to every peer, even one that did not say its own", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const distro = unique("distro")
          const anywhere = { ...job("anywhere", "any"), os: "any" }
          const anyLinux = job("any-linux", "any")
          const anyOs = { ...job("any-os", distro), os: "any" }
          yield* store.replaceCatalog([job("exact", distro), anywhere, anyLinux, anyOs, job("other", "x")])
          const ids = (os: string | null, d: string | null) =>
            store.jobsFor(os, d).pipe(Effect.map((jobs) => jobs.map((j) => j.job_id).sort()))
          assert.deepStrictEqual(yield* ids("linux", distro), ["any-linux", "any-os", "anywhere", "exact"])
          assert.deepStrictEqual(yield* ids("linux", "other"), ["any-linux", "anywhere"])
          assert.deepStrictEqual(yield* ids("windows", distro), ["any-os", "anywhere"])
          assert.deepStrictEqual(yield* ids("linux", null), ["any-linux", "anywhere"])
          assert.deepStrictEqual(yield* ids(null, null), ["anywhere"])
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

    describe("server instances", () => {
      // Lost means not alive for DEAD_AFTER_MS, on the real clock (which both stores use). Every test
      // sees every instance of the shared database, so each looks only at its own server ids.
      const DEAD_AFTER_MS = 50
      const waitOut = TestClock.withLive(Effect.sleep("120 millis"))

      it.effect("calls lost only instances silent too long that did not stop cleanly", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const [lost, alive, stopped, back] = ["lost", "alive", "stopped", "back"].map(unique)
          for (const id of [lost!, alive!, stopped!, back!]) yield* store.instanceAlive(id)
          yield* store.instanceStopped(stopped!)
          yield* store.instanceStopped(back!)
          yield* waitOut
          yield* store.instanceAlive(alive!)
          const found = yield* store.lostInstances({
            deadAfterMs: DEAD_AFTER_MS,
            byServerId: unique("asker"),
          })
          assert.deepStrictEqual(
            found.filter((id) => [lost, alive, stopped, back].includes(id)),
            [lost],
          )
          assert.notInclude(
            yield* store.lostInstances({ deadAfterMs: DEAD_AFTER_MS, byServerId: lost! }),
            lost,
          )
          yield* store.instanceAlive(back!)
          yield* waitOut
          assert.include(
            yield* store.lostInstances({ deadAfterMs: DEAD_AFTER_MS, byServerId: unique("asker") }),
            back,
            "saying it is alive again cleared the clean stop",
          )
        }),
      )

      it.effect("reads an instance's row: how long ago it was alive, a beat that moves, a clean stop", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const id = unique("status")
          assert.isTrue(Option.isNone(yield* store.instanceStatus(id)), "never alive: no row")
          yield* store.instanceAlive(id)
          const first = Option.getOrThrow(yield* store.instanceStatus(id))
          assert.isFalse(first.stopped)
          assert.isAtLeast(first.aliveAgoMs, 0)
          assert.isBelow(first.aliveAgoMs, 5_000)
          assert.strictEqual(Option.getOrThrow(yield* store.instanceStatus(id)).beat, first.beat)
          yield* waitOut
          const aged = Option.getOrThrow(yield* store.instanceStatus(id))
          assert.isAtLeast(aged.aliveAgoMs, 100, "on the real clock")
          yield* store.instanceAlive(id)
          const second = Option.getOrThrow(yield* store.instanceStatus(id))
          assert.notStrictEqual(second.beat, first.beat, "saying it is alive moves the beat")
          assert.isBelow(second.aliveAgoMs, aged.aliveAgoMs)
          yield* store.instanceStopped(id)
          assert.isTrue(Option.getOrThrow(yield* store.instanceStatus(id)).stopped)
        }),
      )

      it.effect("the first proposed session key is everyone's", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const first = yield* store.sessionKey(new Uint8Array(32).fill(1))
          const second = yield* store.sessionKey(new Uint8Array(32).fill(2))
          assert.deepStrictEqual([...second], [...first])
        }),
      )
    })

    describe("session leases", () => {
      const SHORT_LEASE_MS = 50
      const waitOut = TestClock.withLive(Effect.sleep("120 millis"))
      const distro = unique("lease-distro")
      const withTickets = (login: Login, count: number) =>
        Effect.gen(function* () {
          const store = yield* Store
          yield* store.replaceCatalog(Array.from({ length: count }, (_, i) => job(`${distro}-${i}`, distro)))
          return yield* store.createTickets({
            peerId: login.peerId,
            sessionId: login.sessionId,
            serverId: login.serverId,
            jobs: yield* store.jobsFor("linux", distro),
          })
        })

      it.effect("a new login replaces the open session, fences its holder and takes its open tickets", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const peerId = unique("peer")
          const first = loginOf(peerId, { serverId: "server-a" })
          assert.deepStrictEqual(yield* store.login(first), { epoch: 1, adopted: [] })
          const [done, delivered, queued] = yield* withTickets(first, 3)
          const lease = { sessionId: first.sessionId, epoch: 1 }
          yield* store.markDelivered(lease, [done!.ticket, delivered!.ticket])
          yield* store.recordResult(newResult(done!.ticket, peerId, first.sessionId))

          const second = loginOf(peerId, { serverId: "server-b" })
          const { epoch, adopted } = yield* store.login(second)
          assert.strictEqual(epoch, 1)
          assert.deepStrictEqual(
            adopted.map((t) => [t.ticket, t.state, t.sessionId, t.attempts]),
            [
              [delivered!.ticket, "delivered", second.sessionId, 1],
              [queued!.ticket, "queued", second.sessionId, 0],
            ],
          )
          const sessions = new Map(
            (yield* store.sessions({ peerId, limit: 10 })).map((s) => [s.sessionId, s]),
          )
          assert.strictEqual(sessions.get(first.sessionId)?.logoutReason, "replaced")
          assert.isNull(sessions.get(second.sessionId)?.logoutAt ?? null)

          const refused = yield* Effect.flip(store.markDelivered(lease, [queued!.ticket]))
          assert.instanceOf(refused, LeaseLost)
          const late = yield* Effect.flip(
            store.recordResult(newResult(delivered!.ticket, peerId, first.sessionId)),
          )
          assert.instanceOf(late, LeaseLost)
          assert.isFalse(yield* store.logout({ ...lease, peerId, reason: "timeout", serverId: "server-a" }))
          assert.deepStrictEqual(
            yield* store.renewLeases({ serverId: "server-a", leaseMs: LEASE_MS, sessions: [lease] }),
            [],
          )
          assert.strictEqual(
            yield* store.recordResult(newResult(delivered!.ticket, peerId, second.sessionId)),
            "recorded",
            "the new session records the answer to a ticket it carried over",
          )
        }),
      )

      it.effect("renews only the leases its holder has at their epoch", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const a = loginOf(unique("peer"), { serverId: "server-a" })
          const b = loginOf(unique("peer"), { serverId: "server-b" })
          const closed = loginOf(unique("peer"), { serverId: "server-a" })
          for (const l of [a, b, closed]) yield* store.login(l)
          yield* store.logout({ ...closed, epoch: 1, reason: "timeout" })
          const held = yield* store.renewLeases({
            serverId: "server-a",
            leaseMs: LEASE_MS,
            sessions: [
              { sessionId: a.sessionId, epoch: 1 },
              { sessionId: b.sessionId, epoch: 1 },
              { sessionId: closed.sessionId, epoch: 1 },
              { sessionId: a.sessionId, epoch: 7 },
              { sessionId: "not-a-uuid", epoch: 1 },
            ],
          })
          assert.deepStrictEqual(held, [a.sessionId])
        }),
      )

      it.effect("takes over expired sessions with their tickets, once, and fences the old holder", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const lost = unique("lost")
          const live = unique("live")
          const expiring = loginOf(unique("peer"), { serverId: lost, leaseMs: SHORT_LEASE_MS })
          const healthy = loginOf(unique("peer"), { serverId: live })
          yield* store.login(expiring)
          yield* store.login(healthy)
          const [inFlight, waiting] = yield* withTickets(expiring, 2)
          yield* store.markDelivered({ sessionId: expiring.sessionId, epoch: 1 }, [inFlight!.ticket])
          yield* waitOut

          const takers = [unique("taker"), unique("taker"), unique("taker")]
          const rounds = yield* Effect.all(
            takers.map((serverId) => store.takeOverSessions({ serverId, leaseMs: LEASE_MS, limit: 1_000 })),
            { concurrency: "unbounded" },
          )
          const mine = rounds.flat().filter((t) => t.sessionId === expiring.sessionId)
          assert.strictEqual(mine.length, 1, "exactly one taker")
          assert.isFalse(
            rounds.flat().some((t) => t.sessionId === healthy.sessionId),
            "a live lease stays",
          )
          const taken = mine[0]!
          const taker = takers[rounds.findIndex((r) => r.some((t) => t.sessionId === expiring.sessionId))]!
          assert.strictEqual(taken.epoch, 2)
          assert.strictEqual(taken.fromServerId, lost)
          assert.strictEqual(taken.peerId, expiring.peerId)
          assert.deepStrictEqual(
            taken.tickets.map((t) => [t.ticket, t.state]),
            [
              [inFlight!.ticket, "delivered"],
              [waiting!.ticket, "queued"],
            ],
          )
          assert.isNotNull(taken.tickets[0]!.deliveredAt)

          const stale = yield* Effect.flip(
            store.recordResult(newResult(inFlight!.ticket, expiring.peerId, expiring.sessionId, 1)),
          )
          assert.instanceOf(stale, LeaseLost, "the old holder's late write is refused")
          assert.strictEqual(
            yield* store.recordResult(newResult(inFlight!.ticket, expiring.peerId, expiring.sessionId, 2)),
            "recorded",
          )
          const owner = Option.getOrThrow(yield* store.sessionOf(expiring.peerId))
          assert.deepStrictEqual(owner, {
            sessionId: expiring.sessionId,
            ownerId: taker,
            epoch: 2,
            expired: false,
          })
          assert.deepStrictEqual(
            yield* store
              .takeOverSessions({ serverId: unique("late"), leaseMs: LEASE_MS, limit: 1_000 })
              .pipe(Effect.map((ts) => ts.filter((t) => t.sessionId === expiring.sessionId))),
            [],
            "taken once only",
          )
        }),
      )

      it.effect("a session taken over says whether its peer heartbeats (it gave an agent_version)", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const lost = unique("lost")
          const agent = loginOf(unique("peer"), { serverId: lost, leaseMs: SHORT_LEASE_MS })
          const seed = loginOf(unique("seed"), {
            serverId: lost,
            leaseMs: SHORT_LEASE_MS,
            os: null,
            distro: null,
            hostname: null,
            agentVersion: null,
          })
          yield* store.login(agent)
          yield* store.login(seed)
          yield* waitOut
          const taken = yield* store.takeOverSessions({
            serverId: unique("taker"),
            leaseMs: LEASE_MS,
            limit: 1_000,
          })
          const heartbeats = new Map(taken.map((t) => [t.sessionId, t.heartbeats]))
          assert.strictEqual(heartbeats.get(agent.sessionId), true)
          assert.strictEqual(heartbeats.get(seed.sessionId), false)
        }),
      )

      it.effect("an instance asking for one session of its own name takes it back at once", () =>
        Effect.gen(function* () {
          const store = yield* Store
          const serverId = unique("restarted")
          const login = loginOf(unique("peer"), { serverId })
          yield* store.login(login)
          const other = yield* store.takeOverSessions({
            serverId: unique("other"),
            leaseMs: LEASE_MS,
            limit: 1,
            sessionId: login.sessionId,
          })
          assert.deepStrictEqual(other, [], "someone else waits for the lease to run out")
          const [back] = yield* store.takeOverSessions({
            serverId,
            leaseMs: LEASE_MS,
            limit: 1,
            sessionId: login.sessionId,
          })
          assert.strictEqual(back?.epoch, 2)
          assert.isTrue(Option.isNone(yield* store.sessionOf(unique("nobody"))))
        }),
      )
    })

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
          assert.deepStrictEqual(
            (yield* store.queuedTickets(first.sessionId)).map((t) => t.name),
            ["one", "two"],
          )
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
          assert.isTrue(tickets.every((t) => t.state === "queued" && t.attempts === 0))
          yield* store.markDelivered(
            { sessionId: tickets[0]!.sessionId!, epoch: 1 },
            tickets.map((t) => t.ticket),
          )
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

      it.effect("one result after another, and a batch where a refused copy comes first", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
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
          const other = yield* setup
          const mine = yield* setup
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

      it.effect("deliveries for several sessions at once: each lease is judged on its own", () =>
        Effect.gen(function* () {
          const a = yield* setup
          const b = yield* setup
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

      it.effect("records a batch of results in one go, with the outcome of each", () =>
        Effect.gen(function* () {
          const { store, peerId, login, tickets } = yield* setup
          const [first, second] = tickets
          const other = yield* setup
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
          const { store, peerId, login, tickets } = yield* setup
          yield* store.closeTickets([tickets[1]!.ticket], "undeliverable")
          assert.strictEqual(
            yield* store.recordResult(newResult(tickets[1]!.ticket, peerId, login.sessionId)),
            "ticket_closed",
          )
        }),
      )
    })
  })
