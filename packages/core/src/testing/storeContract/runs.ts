import { assert, describe } from "@effect/vitest"
import { Effect } from "effect"
import { maxErrorsReason, type NewRun, RUN_DEADLINE_REASON, Store } from "../../store/Store.ts"
import { loginOf, newResult, type StoreIt, unique } from "./support.ts"

/** Peers of one test, told apart from every other test's by a label of their own. */
const fleet = (
  specs: ReadonlyArray<{ readonly distro: string; readonly role: string; readonly online?: boolean }>,
) =>
  Effect.gen(function* () {
    const store = yield* Store
    const suite = unique("suite")
    const peers = []
    for (const [i, spec] of specs.entries()) {
      const peerId = `${suite}-${i}`
      const login = loginOf(peerId, { distro: spec.distro, labels: { suite, role: spec.role } })
      yield* store.login(login)
      if (spec.online === false) {
        yield* store.logout({
          peerId,
          sessionId: login.sessionId,
          epoch: 1,
          reason: "test",
          serverId: "server-a",
        })
      }
      peers.push({ peerId, login })
    }
    return { store, suite, peers }
  })

const runOf = (suite: string, overrides: Partial<NewRun> = {}): NewRun => ({
  target: { labels: { suite } },
  name: "uptime",
  command: "uptime",
  timeoutMs: 5_000,
  deliverWithinMs: 600_000,
  createdBy: "test",
  ...overrides,
})

/** Runs: targeting, rollout under max concurrency and max errors, deadlines. */
export const runContract = (it: StoreIt) => {
  describe("runs", () => {
    it.effect("a target's criteria must all match; a dry run writes nothing", () =>
      Effect.gen(function* () {
        const { store, suite, peers } = yield* fleet([
          { distro: "debian", role: "web" },
          { distro: "alpine", role: "web" },
          { distro: "debian", role: "db", online: false },
        ])
        const ids = (run: { peers: ReadonlyArray<{ peerId: string }> }) => run.peers.map((p) => p.peerId)
        const web = yield* store.createRun(
          runOf(suite, { target: { labels: { suite, role: "web" } }, dryRun: true }),
        )
        assert.deepStrictEqual(ids(web), [peers[0]!.peerId, peers[1]!.peerId])
        assert.isNull(web.runId)
        assert.deepStrictEqual(web.tickets, [])
        const debian = yield* store.createRun(
          runOf(suite, { target: { labels: { suite }, distro: "debian" } }),
        )
        assert.deepStrictEqual(ids(debian), [peers[0]!.peerId, peers[2]!.peerId])
        assert.deepStrictEqual(
          debian.peers.map((p) => p.online),
          [true, false],
        )
        assert.strictEqual(debian.tickets.length, 2)
        assert.deepStrictEqual(
          debian.tickets.map((t) => [t.peerId, t.state, t.sessionId]),
          [
            [peers[0]!.peerId, "queued", peers[0]!.login.sessionId],
            [peers[2]!.peerId, "queued", null],
          ],
        )
        assert.deepStrictEqual(
          debian.owners.map((o) => o.sessionId),
          [peers[0]!.login.sessionId],
        )
        const online = yield* store.createRun(
          runOf(suite, { target: { labels: { suite }, distro: "debian" }, onlineOnly: true }),
        )
        assert.deepStrictEqual(ids(online), [peers[0]!.peerId])
        assert.deepStrictEqual(
          online.skipped.map((p) => p.peerId),
          [peers[2]!.peerId],
        )
        const named = yield* store.createRun(
          runOf(suite, { target: { peers: [peers[1]!.peerId] }, dryRun: true }),
        )
        assert.deepStrictEqual(ids(named), [peers[1]!.peerId])
        const info = yield* store.runInfo(debian.runId!)
        assert.deepStrictEqual(info?.counts, { queued: 2 })
        assert.strictEqual(info?.offline, 1)
        assert.deepStrictEqual(info?.target, { labels: { suite }, distro: "debian" })
      }),
    )

    it.effect("nothing matching is an error unless allowed; unknown peers are named", () =>
      Effect.gen(function* () {
        const { store, suite } = yield* fleet([{ distro: "debian", role: "web" }])
        const none = yield* Effect.flip(
          store.createRun(runOf(suite, { target: { labels: { suite, role: "db" } } })),
        )
        assert.strictEqual(none._tag, "NoMatchingPeers")
        const ghost = `${suite}-ghost`
        const unknown = yield* Effect.flip(store.createRun(runOf(suite, { target: { peers: [ghost] } })))
        assert.include(unknown.message, ghost)
        const nothing = yield* Effect.flip(store.createRun(runOf(suite, { target: {} })))
        assert.include(nothing.message, "no target")
        const empty = yield* store.createRun(
          runOf(suite, { target: { labels: { suite, role: "db" } }, allowEmpty: true }),
        )
        assert.isNotNull(empty.runId)
        assert.isNotNull((yield* store.runInfo(empty.runId!))?.closedAt ?? null)
      }),
    )

    it.effect("max concurrency holds tickets pending; each ended one lets the next go, with a newer id", () =>
      Effect.gen(function* () {
        const { store, suite, peers } = yield* fleet([
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
        ])
        const run = yield* store.createRun(runOf(suite, { maxConcurrency: { count: 1 } }))
        assert.strictEqual(run.maxConcurrency, 1)
        assert.deepStrictEqual(
          run.tickets.map((t) => t.state),
          ["queued", "pending", "pending"],
        )
        const first = run.tickets[0]!
        // Pending tickets are never sent.
        assert.deepStrictEqual(yield* store.queuedTickets(peers[1]!.login.sessionId), [])
        const nothingYet = yield* store.advanceRuns([run.runId!])
        assert.deepStrictEqual(nothingYet.promoted, [])
        const recorded = yield* store.recordResultBatch([
          newResult(first.ticket, first.peerId, peers[0]!.login.sessionId),
        ])
        assert.deepStrictEqual(recorded.runs, [run.runId!])
        const next = yield* store.advanceRuns(recorded.runs)
        assert.strictEqual(next.promoted.length, 1)
        const promoted = next.promoted[0]!
        assert.strictEqual(promoted.peerId, peers[1]!.peerId)
        assert.strictEqual(promoted.state, "queued")
        assert.isTrue(Number(promoted.ticket) > Number(run.tickets[2]!.ticket), "a newer id than any before")
        assert.deepStrictEqual(
          next.owners.map((o) => o.sessionId),
          [peers[1]!.login.sessionId],
        )
        const queued = yield* store.queuedTickets(peers[1]!.login.sessionId, run.tickets[2]!.ticket)
        assert.deepStrictEqual(
          queued.map((t) => t.ticket),
          [promoted.ticket],
        )
        assert.deepStrictEqual((yield* store.runInfo(run.runId!))?.counts, {
          succeeded: 1,
          queued: 1,
          pending: 1,
        })
        // Still one open: nothing more goes.
        assert.deepStrictEqual((yield* store.advanceRuns([run.runId!])).promoted, [])
      }),
    )

    it.effect("once failures exceed max errors, the rest of the run is cancelled and the run closes", () =>
      Effect.gen(function* () {
        const { store, suite, peers } = yield* fleet([
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
        ])
        const run = yield* store.createRun(
          runOf(suite, { maxConcurrency: { count: 2 }, maxErrors: { count: 0 } }),
        )
        assert.deepStrictEqual(
          run.tickets.map((t) => t.state),
          ["queued", "queued", "pending"],
        )
        const first = run.tickets[0]!
        const failed = {
          ...newResult(first.ticket, first.peerId, peers[0]!.login.sessionId),
          status: "failed" as const,
        }
        const recorded = yield* store.recordResultBatch([failed])
        const advanced = yield* store.advanceRuns(recorded.runs)
        assert.strictEqual(advanced.cancelled, 2)
        assert.deepStrictEqual(advanced.promoted, [])
        const tickets = yield* store.runTickets(run.runId!)
        assert.deepStrictEqual(
          tickets.map((t) => [t.state, t.closeReason]),
          [
            ["failed", null],
            ["cancelled", maxErrorsReason(1, 0)],
            ["cancelled", maxErrorsReason(1, 0)],
          ],
        )
        assert.isNotNull((yield* store.runInfo(run.runId!))?.closedAt ?? null)
      }),
    )

    it.effect("tickets not sent by the run's deadline end undeliverable, pending or queued", () =>
      Effect.gen(function* () {
        const { store, suite } = yield* fleet([
          { distro: "debian", role: "web", online: false },
          { distro: "debian", role: "web", online: false },
        ])
        const run = yield* store.createRun(runOf(suite, { maxConcurrency: { count: 1 }, deliverWithinMs: 0 }))
        const swept = yield* store.sweepRuns()
        assert.isAtLeast(swept.undeliverable, 2)
        const tickets = yield* store.runTickets(run.runId!)
        assert.deepStrictEqual(
          tickets.map((t) => [t.state, t.closeReason]),
          [
            ["undeliverable", RUN_DEADLINE_REASON],
            ["undeliverable", RUN_DEADLINE_REASON],
          ],
        )
        assert.isNotNull((yield* store.runInfo(run.runId!))?.closedAt ?? null)
      }),
    )

    it.effect("percentages resolve against the run's ticket count", () =>
      Effect.gen(function* () {
        const { store, suite } = yield* fleet([
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
          { distro: "debian", role: "web" },
        ])
        const run = yield* store.createRun(
          runOf(suite, { maxConcurrency: { percent: 50 }, maxErrors: { percent: 10 }, dryRun: true }),
        )
        assert.strictEqual(run.maxConcurrency, 2)
        assert.strictEqual(run.maxErrors, 0)
        const peersSeen = yield* store.peerViews()
        const mine = peersSeen.filter((p) => p.labels.suite === suite)
        assert.strictEqual(mine.length, 4)
        assert.isTrue(mine.every((p) => p.heldBy === "server-a" && p.labels.role === "web"))
      }),
    )
  })
}
