import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { type Envelope, Protocol, Store, Transport } from "@picus/core"
import { eventually } from "@picus/core/testing"
import { Effect, Exit, Fiber, Option, Scope } from "effect"
import { makeAgent, openStateFile } from "peer"
import { newClusterKey } from "../src/clusterKey.ts"
import { makeGateway } from "../src/gateway/index.ts"
import { submitJobs } from "../src/submit.ts"
import { enrollmentTokensFrom } from "../src/tokens.ts"
import { compositions } from "./support/layers.ts"
import { rawPeer } from "./support/rawPeer.ts"

// The server's logic and the peer's, in one process, on each composition the server runs on.

const gatewayConfig = {
  serverId: "test-server",
  clusterKey: newClusterKey(),
  leaseMs: 3_000,
  deliveryDeadlineMs: 60_000,
  deadlineSlackMs: 30_000,
  heartbeatMs: 200,
  graceMs: 1_000,
  enrollment: enrollmentTokensFrom("good-token"),
  batchSize: 64,
  staleRegisterMs: 30_000,
  reclaimIdleMs: 30_000,
  drainMs: 1_000,
}

const agentConfig = (peerId: string, token: string) => ({
  token,
  // The key the agent pins to check what the server signs.
  clusterKey: { _tag: "Key" as const, key: gatewayConfig.clusterKey.publicKey },
  serverIp: "127.0.0.1",
  os: { os: "linux", distro: "debian", hostname: "test" },
  state: openStateFile(mkdtempSync(join(tmpdir(), "picus-peer-")), peerId),
  agentVersion: "test",
  concurrency: 2,
  outputCapBytes: 4096,
  defaultTimeoutMs: 5_000,
  exitOnShutdown: true,
  registerTimeoutMs: 5_000,
  reconnectBaseMs: 100,
  reconnectMaxMs: 1_000,
  say: () => Effect.void,
})

const catalog = [
  {
    job_id: "echo",
    name: "Echo",
    os: "linux",
    distro: "debian",
    command: "echo hello-$((6*7))",
    timeout_ms: 5_000,
  },
  {
    job_id: "fail",
    name: "Fail",
    os: "linux",
    distro: "debian",
    command: "echo oops >&2; exit 3",
    timeout_ms: 5_000,
  },
  {
    job_id: "centos",
    name: "Centos only",
    os: "linux",
    distro: "centos",
    command: "echo never",
    timeout_ms: 5_000,
  },
]

const waitFor = <A, E, R>(check: Effect.Effect<A | undefined, E, R>, what: string, ms = 10_000) =>
  eventually(check, what, { timeoutMs: ms })

/** A server whose tickets are due 2 x 100 ms + 200 ms after they are sent. Returns the Store. */
const serveWithShortDeadlines = Effect.gen(function* () {
  const store = yield* Store
  yield* store.replaceCatalog(catalog.map((job) => ({ ...job, timeout_ms: 100 })))
  const gateway = yield* makeGateway({ ...gatewayConfig, deadlineSlackMs: 200, graceMs: 10_000 })
  yield* Effect.forkScoped(gateway.run)
  return store
})

/** The two jobs a raw peer is sent again once their deadline has passed. */
const sentAgain = <E, R>(peer: { readonly next: Effect.Effect<Protocol.ServerMessage, E, R> }) =>
  Effect.all([peer.next, peer.next]).pipe(Effect.map((jobs) => jobs as ReadonlyArray<Protocol.Job>))

describe.each(compositions)("server and peers in one process (%s)", (_name, layer) => {
  it.live(
    "registers, runs matching jobs for real, records results, and shuts down with a reason",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog(catalog)
        const gateway = yield* makeGateway(gatewayConfig)
        const server = yield* Effect.forkScoped(gateway.run)

        const a = yield* makeAgent(agentConfig("peer-a", "good-token"))
        const b = yield* makeAgent(agentConfig("peer-b", "good-token"))
        const bad = yield* makeAgent(agentConfig("peer-bad", "wrong-token"))
        const fa = yield* Effect.forkScoped(a.run)
        const fb = yield* Effect.forkScoped(b.run)
        assert.deepStrictEqual(yield* bad.run, { _tag: "Rejected", reason: "unknown or revoked token" })

        const results = yield* waitFor(
          store.results({ limit: 100 }).pipe(Effect.map((rows) => (rows.length >= 4 ? rows : undefined))),
          "4 results",
        )
        for (const peer of ["peer-a", "peer-b"]) {
          const mine = results.filter((r) => r.peerId === peer)
          assert.deepStrictEqual(mine.map((r) => r.jobName).sort(), ["Echo", "Fail"])
          const echo = mine.find((r) => r.jobName === "Echo")!
          assert.strictEqual(echo.output, "hello-42\n")
          assert.strictEqual(echo.status, "succeeded")
          const fail = mine.find((r) => r.jobName === "Fail")!
          assert.strictEqual(fail.status, "failed")
          assert.strictEqual(fail.exitCode, 3)
          assert.strictEqual(fail.output, "oops\n")
        }

        yield* gateway.shutdown("Upgrade server")
        assert.deepStrictEqual(yield* Fiber.joinAll([fa, fb]), [
          { _tag: "Shutdown", reason: "Upgrade server" },
          { _tag: "Shutdown", reason: "Upgrade server" },
        ])
        yield* Fiber.interrupt(server)

        const log = yield* store.registrationLog({ limit: 100 })
        assert.strictEqual(log.find((r) => r.event === "shutdown")?.reason, "Upgrade server")
        assert.strictEqual(log.find((r) => r.event === "rejected")?.peerId, "peer-bad")
        const sessions = yield* store.sessions({ limit: 10 })
        assert.strictEqual(sessions.length, 2)
        assert.isTrue(sessions.every((s) => s.logoutReason === "server_shutdown"))
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "refuses a result with a wrong token, for a foreign ticket, or sent twice; records the genuine one once",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog(catalog)
        const gateway = yield* makeGateway(gatewayConfig)
        yield* Effect.forkScoped(gateway.run)
        const alice = yield* rawPeer("alice", "good-token")
        const bob = yield* rawPeer("bob", "good-token")
        const [aliceJob, aliceOther] = alice.jobs
        const [bobJob] = bob.jobs

        // A wrong token, then bob's result for alice's ticket under his own valid session.
        yield* alice.sendResult(aliceJob!.ticket, "forged", "not-the-session-token")
        yield* bob.sendResult(aliceJob!.ticket, "stolen")
        // The genuine result, twice, then the second ticket.
        yield* alice.sendResult(aliceJob!.ticket, "first")
        yield* alice.sendResult(aliceJob!.ticket, "second")
        yield* alice.sendResult(aliceOther!.ticket, "other")
        yield* bob.sendResult(bobJob!.ticket, "bob's own")

        const rows = yield* waitFor(
          store.results({ limit: 100 }).pipe(Effect.map((r) => (r.length >= 3 ? r : undefined))),
          "three results",
        )
        yield* Effect.sleep("300 millis") // anything wrongly accepted would have landed by now
        const all = yield* store.results({ limit: 100 })
        assert.strictEqual(all.length, 3)
        const byTicket = new Map(rows.map((r) => [r.ticket, r]))
        assert.strictEqual(byTicket.get(aliceJob!.ticket)?.output, "first")
        assert.strictEqual(byTicket.get(aliceJob!.ticket)?.peerId, "alice")
        assert.strictEqual(byTicket.get(aliceOther!.ticket)?.output, "other")
        assert.strictEqual(byTicket.get(bobJob!.ticket)?.output, "bob's own")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "sends a ticket with no answer once more, then ends it timed_out and refuses its late result",
    () =>
      Effect.gen(function* () {
        const store = yield* serveWithShortDeadlines
        const silent = yield* rawPeer("silent", "good-token") // takes its two jobs, never answers
        const again = yield* sentAgain(silent)
        assert.deepStrictEqual(
          again.map((j) => j.ticket).sort(),
          silent.jobs.map((j) => j.ticket).sort(),
          "the same tickets, sent again",
        )
        const states = yield* waitFor(
          Effect.forEach(silent.jobs, (j) => store.ticketState(j.ticket)).pipe(
            Effect.map((s) => (s.every((x) => Option.getOrUndefined(x) === "timed_out") ? s : undefined)),
          ),
          "both tickets timed out",
        )
        assert.strictEqual(states.length, 2)
        yield* silent.sendResult(silent.jobs[0]!.ticket, "too late")
        yield* Effect.sleep("500 millis")
        assert.strictEqual((yield* store.results({ limit: 10 })).length, 0)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a job whose message was lost runs when it is sent again",
    () =>
      Effect.gen(function* () {
        const store = yield* serveWithShortDeadlines
        const peer = yield* rawPeer("forgetful", "good-token") // as if both job messages were lost
        const again = yield* sentAgain(peer)
        for (const job of again) yield* peer.sendResult(job.ticket, `ran ${job.ticket}`)
        const rows = yield* waitFor(
          store.results({ limit: 10 }).pipe(Effect.map((r) => (r.length === 2 ? r : undefined))),
          "both results",
        )
        assert.deepStrictEqual(rows.map((r) => r.status).sort(), ["succeeded", "succeeded"])
        for (const job of again)
          assert.deepStrictEqual(yield* store.ticketState(job.ticket), Option.some("succeeded"))
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a server with nothing else to send its peer sends it a heartbeat, at least once a grace period",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        yield* (yield* Store).replaceCatalog(catalog)
        const gateway = yield* makeGateway({ ...gatewayConfig, graceMs: 800 })
        yield* Effect.forkScoped(gateway.run)
        const peer = yield* rawPeer("quiet", "good-token")
        // The peer keeps its side up: a heartbeat every 200 ms.
        yield* transport
          .sendUplink(Protocol.encodeMessage({ msg: "heartbeat", peer_id: "quiet", token: peer.session }))
          .pipe(Effect.delay("200 millis"), Effect.forever, Effect.forkScoped)
        const started = Date.now()
        const heard = yield* peer.next
        assert.strictEqual(Protocol.serverMessageKind(heard), "heartbeat")
        assert.strictEqual(heard.token, peer.session)
        assert.strictEqual((heard as Protocol.Heartbeat).server_id, "test-server")
        assert.isBelow(Date.now() - started, 3_000)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a job is sent as PostgreSQL holds it: a forged notice cannot change its command",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        const transport = yield* Transport
        yield* store.replaceCatalog(catalog)
        const gateway = yield* makeGateway(gatewayConfig)
        yield* Effect.forkScoped(gateway.run)
        const peer = yield* rawPeer("target", "good-token")
        const { tickets, owner } = yield* store.submitTickets({
          peerId: "target",
          serverId: "test",
          jobs: [{ name: "real", command: "echo real", timeoutMs: 1_000 }],
        })
        const [ticket] = tickets
        // Anyone who can write to the instance's stream could send this: same ticket, other command.
        yield* transport.forward(
          owner!.ownerId,
          Protocol.encodeServerNotice({
            notice: "tickets_waiting",
            session_id: owner!.sessionId,
            tickets: [
              {
                ticket: ticket!.ticket,
                job: { name: "real", os: "linux", distro: "debian", command: "rm -rf /" },
              },
            ],
          }),
        )
        const job = (yield* peer.next) as Protocol.Job
        assert.strictEqual(job.ticket, ticket!.ticket)
        assert.strictEqual(job.job.command, "echo real")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a registration sent again while the first still waited opens no second session",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        const store = yield* Store
        const register = Protocol.encodeMessage({
          msg: "register",
          peer_id: "eager",
          token: "good-token",
          server_ip: "127.0.0.1",
        })
        yield* transport.sendUplink(register)
        yield* transport.sendUplink(register) // the peer's resend, while the server is not reading yet
        yield* Effect.sleep("20 millis")
        const gateway = yield* makeGateway(gatewayConfig)
        yield* Effect.forkScoped(gateway.run)
        yield* waitFor(
          store
            .sessions({ peerId: "eager", limit: 5 })
            .pipe(Effect.map((s) => (s.length > 0 ? s : undefined))),
          "the session",
        )
        yield* Effect.sleep("500 millis") // a second session would be open by now
        const sessions = yield* store.sessions({ peerId: "eager", limit: 5 })
        assert.strictEqual(sessions.length, 1)
        assert.isNull(sessions[0]!.logoutAt)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a peer that speaks only the seed gets the jobs for any os, stays logged in while silent, hears the shutdown",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        const store = yield* Store
        yield* store.replaceCatalog([
          ...catalog,
          {
            job_id: "anywhere",
            name: "Anywhere",
            os: "any",
            distro: "any",
            command: "echo hi",
            timeout_ms: 5_000,
          },
        ])
        const gateway = yield* makeGateway({ ...gatewayConfig, heartbeatMs: 100, graceMs: 300, drainMs: 200 })
        const server = yield* Effect.forkScoped(gateway.run)
        const tail = yield* transport.inboxTail("seed")
        const reader = yield* transport.inboxReader("seed")
        let cursor = tail
        // The wire text itself: the seed's peer knows nothing of how this project decodes it.
        const next = Effect.gen(function* () {
          const [entry] = yield* waitFor(
            reader
              .read(cursor, { count: 1, blockMs: 200 })
              .pipe(Effect.map((es) => (es.length > 0 ? es : undefined))),
            "a message for the seed peer",
          )
          cursor = (entry as Envelope).id
          return JSON.parse((entry as Envelope).payload) as Record<string, unknown>
        })
        // The seed's register, with only its fields.
        yield* transport.sendUplink(
          JSON.stringify({ msg: "register", peer_id: "seed", token: "good-token", server_ip: "10.0.0.5" }),
        )
        const accepted = yield* next
        assert.strictEqual(accepted.status, "accepted")
        const job = yield* next
        // The seed's fields, and the cluster's signature last, which a seed peer ignores.
        assert.deepStrictEqual(Object.keys(job), ["msg", "ticket", "peer_id", "token", "job", "sig"])
        assert.strictEqual(job.msg, "register")
        assert.strictEqual((job.job as { name: string }).name, "Anywhere")
        yield* transport.sendUplink(
          JSON.stringify({
            msg: "result",
            ticket: job.ticket,
            peer_id: "seed",
            token: job.token,
            result: "hi\n",
          }),
        )
        yield* waitFor(
          store
            .results({ peerId: "seed", limit: 5 })
            .pipe(Effect.map((r) => (r.length === 1 ? r : undefined))),
          "the seed peer's result",
        )
        yield* Effect.sleep("1200 millis") // four grace periods without a word from the peer
        const [open] = yield* store.sessions({ peerId: "seed", limit: 1 })
        assert.isNull(open!.logoutReason, "a peer that never heartbeats is not logged out for silence")
        yield* gateway.shutdown("Upgrade server")
        let shutdown = yield* next
        while (shutdown.msg === "heartbeat") shutdown = yield* next
        assert.deepStrictEqual(
          [shutdown.msg, shutdown.token, shutdown.reason],
          ["shutdown", job.token, "Upgrade server"],
        )
        yield* Fiber.interrupt(server)
        const [closed] = yield* store.sessions({ peerId: "seed", limit: 1 })
        assert.strictEqual(closed!.logoutReason, "server_shutdown")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "drops malformed uplink messages and keeps serving",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        const store = yield* Store
        const gateway = yield* makeGateway(gatewayConfig)
        yield* Effect.forkScoped(gateway.run)
        for (const junk of [
          "",
          "not json",
          "[]",
          '{"msg":"hello"}',
          '{"msg":"result"}',
          "x".repeat(2_000_000),
        ]) {
          yield* transport.sendUplink(junk)
        }
        const tail = yield* transport.inboxTail("late")
        yield* transport.sendUplink(
          Protocol.encodeMessage({
            msg: "register",
            peer_id: "late",
            token: "good-token",
            server_ip: "127.0.0.1",
          }),
        )
        const reader = yield* transport.inboxReader("late")
        const [reply] = yield* reader.read(tail, { count: 1, blockMs: 5_000 })
        assert.include(reply?.payload ?? "", '"status":"accepted"')
        assert.strictEqual((yield* store.sessions({ peerId: "late", limit: 1 })).length, 1)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )
})

// The embedded composition is one process by design: several instances do not apply to it.
const shared = compositions.filter(([name]) => name !== "embedded")
describe.each(shared)("several server instances (%s)", (_name, layer) => {
  const instance = (serverId: string) => ({ ...gatewayConfig, serverId, leaseMs: 1_500 })
  /** Starts an instance in a scope of its own: closing the scope is the instance dying. */
  const startInstance = (serverId: string) =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      // An instance the test leaves running stops with the test.
      yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
      const gateway = yield* makeGateway(instance(serverId)).pipe(Scope.provide(scope))
      yield* Effect.forkIn(gateway.run, scope)
      return { gateway, die: Scope.close(scope, Exit.void) }
    })

  it.live(
    "share the work: every peer keeps one session, and every result is recorded once",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog(catalog)
        yield* startInstance("a")
        yield* startInstance("b")
        const peers = ["p1", "p2", "p3", "p4"]
        for (const p of peers)
          yield* makeAgent(agentConfig(p, "good-token")).pipe(Effect.flatMap((a) => Effect.forkScoped(a.run)))
        yield* waitFor(
          store.results({ limit: 100 }).pipe(Effect.map((r) => (r.length >= 8 ? r : undefined))),
          "8 results",
        )
        yield* Effect.sleep("2 seconds") // heartbeats cross both instances meanwhile
        const results = yield* store.results({ limit: 100 })
        assert.strictEqual(results.length, 8)
        assert.strictEqual(new Set(results.map((r) => r.ticket)).size, 8)
        const sessions = yield* store.sessions({ limit: 100 })
        assert.deepStrictEqual(
          sessions.map((s) => s.peerId).sort(),
          peers,
          "one session per peer, no flapping",
        )
        assert.isTrue(sessions.every((s) => s.logoutAt === null))
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "when one dies, the other takes its sessions over with their tickets; the peers keep their sessions",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog(catalog)
        const a = yield* startInstance("a")
        const peers = ["p1", "p2"]
        for (const p of peers)
          yield* makeAgent(agentConfig(p, "good-token")).pipe(Effect.flatMap((x) => Effect.forkScoped(x.run)))
        yield* waitFor(
          store.results({ limit: 10 }).pipe(Effect.map((r) => (r.length === 4 ? r : undefined))),
          "the catalog's 4 results, through a",
        )
        yield* startInstance("b")
        yield* a.die
        // Submitted while a is dead but still holds the leases: the notice goes to a and is lost,
        // so these arrive only through b's takeover, which reads them from PostgreSQL.
        for (const peerId of peers) {
          const { ownerId } = yield* submitJobs({
            peerId,
            submittedBy: "test",
            jobs: [{ name: "after", command: `echo after-${peerId}`, timeoutMs: 5_000 }],
          })
          assert.strictEqual(ownerId, "a")
        }
        const results = yield* waitFor(
          store
            .results({ limit: 10 })
            .pipe(Effect.map((r) => (r.filter((x) => x.jobName === "after").length === 2 ? r : undefined))),
          "the submitted jobs' results, through b",
          15_000,
        )
        assert.strictEqual(new Set(results.map((r) => r.ticket)).size, 6)
        assert.deepStrictEqual(
          results
            .filter((r) => r.jobName === "after")
            .map((r) => r.output.trim())
            .sort(),
          ["after-p1", "after-p2"],
        )
        const sessions = yield* store.sessions({ limit: 10 })
        assert.strictEqual(sessions.length, 2, "no new login: the sessions carried on")
        assert.isTrue(sessions.every((s) => s.logoutAt === null && s.serverId === "a"))
        for (const peerId of peers) {
          const owner = Option.getOrThrow(yield* store.sessionOf(peerId))
          assert.strictEqual(owner.ownerId, "b")
          assert.strictEqual(owner.epoch, 2)
        }
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a session of a peer that never heartbeats, taken over from a lost instance, is not logged out for silence",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        const transport = yield* Transport
        yield* store.replaceCatalog(catalog)
        const a = yield* startInstance("a")
        yield* transport.sendUplink(
          JSON.stringify({ msg: "register", peer_id: "seed", token: "good-token", server_ip: "10.0.0.5" }),
        )
        yield* waitFor(
          store
            .sessions({ peerId: "seed", limit: 1 })
            .pipe(Effect.map((s) => (s.length > 0 ? s : undefined))),
          "the seed peer's session, on a",
        )
        yield* startInstance("b")
        yield* a.die
        yield* waitFor(
          store
            .sessionOf("seed")
            .pipe(Effect.map((o) => (Option.getOrUndefined(o)?.ownerId === "b" ? true : undefined))),
          "b to take the session over",
          15_000,
        )
        yield* Effect.sleep("3 seconds") // three grace periods on b, and not a word from the peer
        const [session] = yield* store.sessions({ peerId: "seed", limit: 1 })
        assert.isNull(session!.logoutReason)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "an instance started again under its id takes its earlier run's sessions back, a silent peer's too",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        const transport = yield* Transport
        const a = yield* startInstance("a")
        yield* transport.sendUplink(
          JSON.stringify({ msg: "register", peer_id: "seed", token: "good-token", server_ip: "10.0.0.5" }),
        )
        yield* waitFor(
          store
            .sessionOf("seed")
            .pipe(Effect.map((o) => (Option.getOrUndefined(o)?.epoch === 1 ? true : undefined))),
          "the seed peer's session, on a",
        )
        yield* a.die // and started again at once: its first run's lease still holds
        const again = yield* startInstance("a")
        // The peer never says a word: nothing but the restart's takeover brings its session back.
        yield* waitFor(
          store.sessionOf("seed").pipe(
            Effect.map((o) => {
              const owner = Option.getOrUndefined(o)
              return owner?.ownerId === "a" && owner.epoch === 2 && !owner.expired ? true : undefined
            }),
          ),
          "the new run of a to take the session back",
          15_000,
        )
        assert.strictEqual((yield* again.gateway.status).sessions, 1)
        const [session] = yield* store.sessions({ peerId: "seed", limit: 1 })
        assert.isNull(session!.logoutReason, "the same session, carried on")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )
})
