import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { TestClock } from "effect/testing"
import { LeaseLost, type Login, type RegistrationClaim, Store, type TakenSession } from "../../store/Store.ts"
import { job, LEASE_MS, loginOf, newResult, type StoreIt, unique } from "./support.ts"

/** Server instances, the session key and session leases. */
export const sessionContract = (it: StoreIt) => {
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
        assert.notInclude(yield* store.lostInstances({ deadAfterMs: DEAD_AFTER_MS, byServerId: lost! }), lost)
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
  })

  describe("registration admission", () => {
    const claim = (peerId: string, over: Partial<RegistrationClaim> = {}): RegistrationClaim => ({
      peerId,
      identityKey: null,
      ts: null,
      now: 1_000_000,
      minIntervalMs: 0,
      ...over,
    })

    it.effect("binds a peer id to the first key it is admitted with, and refuses any other after", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("bound")
        assert.strictEqual(yield* store.admitRegistration(claim(peerId)), "admitted", "unsigned, unbound")
        assert.strictEqual(
          yield* store.admitRegistration(claim(peerId, { identityKey: "key-a", ts: 1 })),
          "admitted",
        )
        assert.strictEqual(yield* store.admitRegistration(claim(peerId)), "wrong_identity", "unsigned")
        assert.strictEqual(
          yield* store.admitRegistration(claim(peerId, { identityKey: "key-b", ts: 2 })),
          "wrong_identity",
        )
        assert.strictEqual(
          yield* store.admitRegistration(claim(peerId, { identityKey: "key-a", ts: 3 })),
          "admitted",
        )
      }),
    )

    it.effect("refuses a ts not newer than the last admitted one, and does not record a refusal", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("replay")
        const signed = (ts: number) => claim(peerId, { identityKey: "key-a", ts })
        assert.strictEqual(yield* store.admitRegistration(signed(100)), "admitted")
        assert.strictEqual(yield* store.admitRegistration(signed(100)), "replayed", "the same again")
        assert.strictEqual(yield* store.admitRegistration(signed(99)), "replayed", "older")
        assert.strictEqual(yield* store.admitRegistration(signed(101)), "admitted")
        assert.strictEqual(
          yield* store.admitRegistration(claim(peerId, { identityKey: "key-b", ts: 500 })),
          "wrong_identity",
        )
        assert.strictEqual(yield* store.admitRegistration(signed(102)), "admitted", "the refusal kept no ts")
      }),
    )

    it.effect("admits a peer id at most once per interval, counted from the last admission", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("rate")
        const at = (now: number) => claim(peerId, { now, minIntervalMs: 2_000 })
        assert.strictEqual(yield* store.admitRegistration(at(10_000)), "admitted")
        assert.strictEqual(yield* store.admitRegistration(at(11_999)), "too_many")
        assert.strictEqual(yield* store.admitRegistration(at(12_000)), "admitted")
        assert.strictEqual(yield* store.admitRegistration(at(13_000)), "too_many")
        assert.strictEqual(
          yield* store.admitRegistration(claim(unique("other"), { now: 13_000, minIntervalMs: 2_000 })),
          "admitted",
          "per peer id",
        )
      }),
    )

    it.effect("decides concurrent registrations of one peer id one at a time", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = unique("race")
        const answers = yield* Effect.all(
          Array.from({ length: 8 }, () =>
            store.admitRegistration(claim(peerId, { identityKey: "key-a", ts: 7, minIntervalMs: 2_000 })),
          ),
          { concurrency: "unbounded" },
        )
        assert.strictEqual(answers.filter((a) => a === "admitted").length, 1)
      }),
    )

    it.effect("decides registrations asked together as it would one by one, a peer's one at a time", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const [fresh, bound, replayed, rated, twice] = ["fresh", "bound", "replayed", "rated", "twice"].map(
          unique,
        )
        // The history of each, one at a time.
        yield* store.admitRegistration(claim(bound!, { identityKey: "key-a", ts: 1 }))
        yield* store.admitRegistration(claim(replayed!, { identityKey: "key-a", ts: 50 }))
        yield* store.admitRegistration(claim(rated!, { now: 999_000 }))
        const together = yield* Effect.all(
          [
            claim(fresh!, { identityKey: "key-f", ts: 1 }),
            claim(bound!, { identityKey: "key-b", ts: 2 }),
            claim(replayed!, { identityKey: "key-a", ts: 50 }),
            claim(rated!, { minIntervalMs: 2_000 }),
            claim(unique("unsigned")),
            // Of one peer: one at a time, in an order of their own.
            claim(twice!, { identityKey: "key-t", ts: 8 }),
            claim(twice!, { identityKey: "key-t", ts: 8 }),
          ].map((c) => store.admitRegistration(c)),
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(together.slice(0, 5), [
          "admitted",
          "wrong_identity",
          "replayed",
          "too_many",
          "admitted",
        ])
        assert.sameMembers(together.slice(5), ["admitted", "replayed"])
        // What the admitted ones recorded holds for the next.
        assert.strictEqual(
          yield* store.admitRegistration(claim(fresh!, { identityKey: "key-x", ts: 2 })),
          "wrong_identity",
        )
        assert.strictEqual(
          yield* store.admitRegistration(claim(twice!, { identityKey: "key-t", ts: 8 })),
          "replayed",
        )
      }),
    )
  })

  describe("sessions and instance leases", () => {
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
        const sessions = new Map((yield* store.sessions({ peerId, limit: 10 })).map((s) => [s.sessionId, s]))
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
          yield* store.renewLease({ serverId: "server-a", leaseMs: LEASE_MS, sessions: [lease] }),
          [],
        )
        assert.strictEqual(
          yield* store.recordResult(newResult(delivered!.ticket, peerId, second.sessionId)),
          "recorded",
          "the new session records the answer to a ticket it carried over",
        )
      }),
    )

    it.effect("logins asked together: each its peer's session and tickets; of one peer, one at a time", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const [a, b, c] = ["a", "b", "c"].map((p) => loginOf(unique(`together-${p}`)))
        const carried = new Map<string, ReadonlyArray<string>>()
        for (const first of [a!, b!, c!]) {
          yield* store.login(first)
          carried.set(
            first.peerId,
            (yield* withTickets(first, 2)).map((t) => t.ticket),
          )
        }
        const next = [a!, b!, c!].map((first) => loginOf(first.peerId, { serverId: "server-b" }))
        const last = loginOf(c!.peerId, { serverId: "server-b", labels: { role: "last" } })
        const answers = yield* Effect.all(
          [...next, last].map((login) => store.login(login)),
          { concurrency: "unbounded" },
        )
        for (const [i, login] of next.entries()) {
          if (login.peerId === c!.peerId) continue
          assert.deepStrictEqual(
            answers[i]!.adopted.map((t) => [t.ticket, t.sessionId]),
            carried.get(login.peerId)!.map((ticket) => [ticket, login.sessionId]),
          )
        }
        // Of one peer's two: one at a time, in an order of their own; the later replaced the earlier
        // and took what it had taken.
        const reasons = new Map(
          (yield* store.sessions({ peerId: c!.peerId, limit: 10 })).map((s) => [s.sessionId, s.logoutReason]),
        )
        const pair = [next[2]!, last]
        const stays = pair.filter((l) => reasons.get(l.sessionId) === null)
        assert.lengthOf(stays, 1)
        const kept = stays[0]!
        assert.deepStrictEqual(
          answers[pair.indexOf(kept) + 2]!.adopted.map((t) => [t.ticket, t.sessionId]),
          carried.get(c!.peerId)!.map((ticket) => [ticket, kept.sessionId]),
        )
        assert.deepStrictEqual(
          [c!, ...pair].map((l) => reasons.get(l.sessionId)),
          [c!, ...pair].map((l) => (l === kept ? null : "replaced")),
        )
        // Each peer's log: the replaced session's logout before the login that replaced it.
        const log = (yield* store.registrationLog({ limit: 1_000 })).filter((r) => r.peerId === a!.peerId)
        assert.deepStrictEqual(
          log
            .sort((x, y) => x.id - y.id)
            .map((r) => [r.event, r.sessionId === a!.sessionId ? "first" : "next", r.reason]),
          [
            ["login", "first", null],
            ["logout", "first", "replaced"],
            ["login", "next", null],
          ],
        )
      }),
    )

    it.effect("ending a token's sessions closes them with the reason and fences their holder", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const revoked = 1_000_000 + Math.floor(Math.random() * 1_000_000_000)
        const kept = revoked + 1
        const a = loginOf(unique("peer"), { tokenId: revoked })
        const b = loginOf(unique("peer"), { tokenId: revoked })
        const other = loginOf(unique("peer"), { tokenId: kept })
        const noToken = loginOf(unique("peer"))
        for (const login of [a, b, other, noToken]) yield* store.login(login)
        yield* store.logout({
          peerId: b.peerId,
          sessionId: b.sessionId,
          epoch: 1,
          reason: "peer_logout",
          serverId: "server-a",
        })
        const ended = yield* store.endSessionsOfTokens({
          tokenIds: [revoked],
          reason: "revoked",
          serverId: "operator",
        })
        assert.deepStrictEqual(ended, [{ peerId: a.peerId, sessionId: a.sessionId }], "only open ones")
        const reasonOf = (login: Login) =>
          store
            .sessions({ peerId: login.peerId, limit: 1 })
            .pipe(Effect.map(([s]) => s?.logoutReason ?? null))
        assert.strictEqual(yield* reasonOf(a), "revoked")
        assert.strictEqual(yield* reasonOf(b), "peer_logout")
        assert.isNull(yield* reasonOf(other))
        assert.isNull(yield* reasonOf(noToken))
        assert.deepStrictEqual(
          yield* store.renewLease({
            serverId: "server-a",
            leaseMs: LEASE_MS,
            sessions: [a, other].map((l) => ({ sessionId: l.sessionId, epoch: 1 })),
          }),
          [other.sessionId],
          "its holder lets the ended one go",
        )
        assert.deepStrictEqual(
          yield* store.endSessionsOfTokens({ tokenIds: [], reason: "revoked", serverId: "x" }),
          [],
        )
      }),
    )

    it.effect("a renewal answers only the sessions its instance holds at their epoch", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const a = loginOf(unique("peer"), { serverId: "server-a" })
        const b = loginOf(unique("peer"), { serverId: "server-b" })
        const closed = loginOf(unique("peer"), { serverId: "server-a" })
        for (const l of [a, b, closed]) yield* store.login(l)
        yield* store.logout({ ...closed, epoch: 1, reason: "timeout" })
        const held = yield* store.renewLease({
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
          sealed: false,
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

    it.effect("a sealed session stays sealed: its owner and its taker are told so", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const lost = unique("lost")
        const sealed = loginOf(unique("sealed"), { serverId: lost, leaseMs: SHORT_LEASE_MS, sealed: true })
        const plain = loginOf(unique("plain"), { serverId: lost, leaseMs: SHORT_LEASE_MS })
        yield* store.login(sealed)
        yield* store.login(plain)
        assert.isTrue(Option.getOrThrow(yield* store.sessionOf(sealed.peerId)).sealed)
        assert.isFalse(Option.getOrThrow(yield* store.sessionOf(plain.peerId)).sealed ?? false)
        yield* waitOut
        const taken = yield* store.takeOverSessions({
          serverId: unique("taker"),
          leaseMs: LEASE_MS,
          limit: 1_000,
        })
        const isSealed = new Map(taken.map((t) => [t.sessionId, t.sealed ?? false]))
        assert.strictEqual(isSealed.get(sealed.sessionId), true)
        assert.strictEqual(isSealed.get(plain.sessionId), false)
      }),
    )

    it.effect("renewing an instance's one row keeps every session it holds", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const kept = unique("kept")
        const silent = unique("silent")
        const logins = [kept, kept, kept, silent].map((serverId) =>
          loginOf(unique("peer"), { serverId, leaseMs: SHORT_LEASE_MS }),
        )
        for (const l of logins) yield* store.login(l)
        const leases = logins.slice(0, 3).map((l) => ({ sessionId: l.sessionId, epoch: 1 }))
        assert.sameMembers(
          [...(yield* store.renewLease({ serverId: kept, leaseMs: LEASE_MS, sessions: leases }))],
          leases.map((l) => l.sessionId),
        )
        yield* waitOut
        const owners = yield* Effect.forEach(logins, (l) =>
          store.sessionOf(l.peerId).pipe(Effect.map((o) => Option.getOrThrow(o).expired)),
        )
        assert.deepStrictEqual(owners, [false, false, false, true], "the renewed lease holds all three")
        const taken = yield* store.takeOverSessions({
          serverId: unique("taker"),
          leaseMs: LEASE_MS,
          limit: 1_000,
        })
        const ours = new Set(logins.map((l) => l.sessionId))
        assert.deepStrictEqual(
          taken.filter((t) => ours.has(t.sessionId)).map((t) => t.sessionId),
          [logins[3]!.sessionId],
          "only the silent instance's session",
        )
      }),
    )

    it.effect(
      "a lost instance's sessions are taken over in bulk, once each, epoch + 1, by concurrent takers",
      () =>
        Effect.gen(function* () {
          const store = yield* Store
          const lost = unique("lost")
          const live = unique("live")
          const logins = Array.from({ length: 12 }, () =>
            loginOf(unique("peer"), { serverId: lost, leaseMs: SHORT_LEASE_MS }),
          )
          for (const l of logins) yield* store.login(l)
          const [closed, replaced, ...open] = logins
          yield* store.logout({ ...closed!, epoch: 1, reason: "timeout" })
          yield* store.login(loginOf(replaced!.peerId, { serverId: live }))
          const [ticket] = yield* withTickets(open[0]!, 1)
          yield* waitOut

          const ours = new Set(logins.map((l) => l.sessionId))
          // Each taker takes batches of 3 until one brings none of these.
          const taker = (serverId: string) =>
            Effect.gen(function* () {
              const got: Array<TakenSession> = []
              for (;;) {
                const batch = yield* store.takeOverSessions({ serverId, leaseMs: LEASE_MS, limit: 3 })
                const mine = batch.filter((t) => ours.has(t.sessionId))
                if (mine.length === 0) return got
                got.push(...mine)
              }
            })
          const takers = [unique("taker"), unique("taker"), unique("taker")]
          const rounds = yield* Effect.all(takers.map(taker), { concurrency: "unbounded" })
          const taken = rounds.flat()
          assert.sameMembers(
            taken.map((t) => t.sessionId),
            open.map((l) => l.sessionId),
            "every open session, each once; neither the closed nor the replaced one",
          )
          assert.isTrue(taken.every((t) => t.epoch === 2 && t.fromServerId === lost))
          for (const [i, round] of rounds.entries()) {
            for (const t of round) {
              const owner = Option.getOrThrow(yield* store.sessionOf(t.peerId))
              assert.deepStrictEqual([owner.ownerId, owner.epoch, owner.expired], [takers[i], 2, false])
            }
          }

          const first = open[0]!
          const old = { sessionId: first.sessionId, epoch: 1 }
          assert.instanceOf(yield* Effect.flip(store.markDelivered(old, [ticket!.ticket])), LeaseLost)
          assert.instanceOf(
            yield* Effect.flip(
              store.recordResult(newResult(ticket!.ticket, first.peerId, first.sessionId, 1)),
            ),
            LeaseLost,
          )
          assert.isFalse(
            yield* store.logout({ ...old, peerId: first.peerId, reason: "timeout", serverId: lost }),
          )
          assert.deepStrictEqual(
            yield* store.renewLease({ serverId: lost, leaseMs: LEASE_MS, sessions: [old] }),
            [],
            "its renewal, late, holds none of them",
          )
          assert.strictEqual(
            yield* store.recordResult(newResult(ticket!.ticket, first.peerId, first.sessionId, 2)),
            "recorded",
            "the new epoch writes",
          )
          const again = yield* store.takeOverSessions({
            serverId: unique("late"),
            leaseMs: LEASE_MS,
            limit: 1_000,
          })
          assert.isFalse(
            again.some((t) => ours.has(t.sessionId)),
            "taken once only",
          )
        }),
    )

    it.effect("a renewal racing takers: what it holds and what they took are apart and make up all", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const paused = unique("paused")
        const logins = Array.from({ length: 20 }, () =>
          loginOf(unique("peer"), { serverId: paused, leaseMs: SHORT_LEASE_MS }),
        )
        for (const l of logins) yield* store.login(l)
        yield* waitOut
        const ours = new Set(logins.map((l) => l.sessionId))
        const taker = unique("taker")
        const [held, taken] = yield* Effect.all(
          [
            store.renewLease({
              serverId: paused,
              leaseMs: LEASE_MS,
              sessions: logins.map((l) => ({ sessionId: l.sessionId, epoch: 1 })),
            }),
            Effect.gen(function* () {
              const got: Array<string> = []
              for (let i = 0; i < 10; i++) {
                const batch = yield* store.takeOverSessions({ serverId: taker, leaseMs: LEASE_MS, limit: 2 })
                got.push(...batch.map((t) => t.sessionId).filter((id) => ours.has(id)))
              }
              return got
            }),
          ],
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(
          held.filter((id) => taken.includes(id)),
          [],
          "no session both held and taken",
        )
        assert.sameMembers([...held, ...taken], [...ours])
        const late = yield* store.takeOverSessions({
          serverId: unique("late"),
          leaseMs: LEASE_MS,
          limit: 1_000,
        })
        assert.isFalse(
          late.some((t) => ours.has(t.sessionId)),
          "once renewed, held",
        )
      }),
    )

    it.effect("an instance that starts again loses its earlier run's sessions, to others or to itself", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const serverId = unique("restarting")
        yield* store.renewLease({ serverId, leaseMs: LEASE_MS, sessions: [] })
        yield* store.instanceAlive(serverId)
        const before = loginOf(unique("peer"), { serverId })
        const other = loginOf(unique("peer"), { serverId })
        yield* store.login(before)
        yield* store.login(other)
        yield* store.instanceAlive(serverId) // killed, then started again under the same id
        const after = loginOf(unique("peer"), { serverId })
        yield* store.login(after)
        const leases = [before, other, after].map((l) => ({ sessionId: l.sessionId, epoch: 1 }))
        assert.deepStrictEqual(
          yield* store.renewLease({ serverId, leaseMs: LEASE_MS, sessions: leases }),
          [after.sessionId],
          "the new run holds only its own, lease renewed or not",
        )
        assert.isTrue(Option.getOrThrow(yield* store.sessionOf(before.peerId)).expired)
        assert.isFalse(Option.getOrThrow(yield* store.sessionOf(after.peerId)).expired)
        const ours = new Set(leases.map((l) => l.sessionId))
        const byOther = (yield* store.takeOverSessions({
          serverId: unique("other"),
          leaseMs: LEASE_MS,
          limit: 1,
        }))
          .map((t) => t.sessionId)
          .filter((id) => ours.has(id))
        const bySelf = (yield* store.takeOverSessions({ serverId, leaseMs: LEASE_MS, limit: 1_000 }))
          .map((t) => t.sessionId)
          .filter((id) => ours.has(id))
        assert.sameMembers([...byOther, ...bySelf], [before.sessionId, other.sessionId])
        assert.deepStrictEqual(
          yield* store.renewLease({
            serverId,
            leaseMs: LEASE_MS,
            sessions: bySelf.map((sessionId) => ({ sessionId, epoch: 2 })),
          }),
          bySelf,
          "what it took back from its earlier run it holds now",
        )
      }),
    )

    it.effect("an instance that stops cleanly ends its lease: a session it left open is taken at once", () =>
      Effect.gen(function* () {
        const store = yield* Store
        const serverId = unique("stopping")
        const left = loginOf(unique("peer"), { serverId })
        yield* store.login(left)
        assert.isFalse(Option.getOrThrow(yield* store.sessionOf(left.peerId)).expired)
        yield* store.instanceStopped(serverId)
        assert.isTrue(Option.getOrThrow(yield* store.sessionOf(left.peerId)).expired)
        const taken = yield* store.takeOverSessions({
          serverId: unique("taker"),
          leaseMs: LEASE_MS,
          limit: 1_000,
        })
        assert.include(
          taken.map((t) => t.sessionId),
          left.sessionId,
        )
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
}
