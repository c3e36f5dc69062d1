import { assert, describe, it } from "@effect/vitest"
import { Protocol, Transport, TransportMemory, TransportRedis, Trust } from "@picus/core"
import { deleteKeysWithPrefix, eventuallyTrue, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { Effect, Result } from "effect"
import { afterAll } from "vitest"
import { submitAtRate } from "../src/rate.ts"
import { type FleetConfig, makeSimulatedFleet } from "../src/SimulatedFleet.ts"

const config = (overrides: Partial<FleetConfig> = {}): FleetConfig => ({
  peers: 50,
  runId: "t",
  token: "enroll-secret",
  serverIp: "127.0.0.1",
  os: { os: "linux", distro: "debian" },
  agentVersion: "test",
  jobMs: 0,
  rampMs: 0,
  registerTimeoutMs: 5_000,
  reconnectBaseMs: 20,
  reconnectMaxMs: 40,
  ...overrides,
})

interface FakeServerOptions {
  readonly heartbeatMs: number
  readonly jobsPerLogin: number
  /** A rejection reason for this registration, or undefined to accept it. */
  readonly reject?: (peerId: string) => string | undefined
}

/**
 * The server's side of the protocol, just enough of it: accepts registrations with a fresh session
 * token, sends each new session some jobs, and records what the peers say.
 */
const fakeServer = (options: FakeServerOptions) =>
  Effect.gen(function* () {
    const t = yield* Transport
    const reader = yield* t.uplinkReader("fake")
    const seen = {
      registers: [] as Array<Protocol.Register>,
      sessions: new Map<string, string>(),
      results: [] as Array<Protocol.Result>,
      heartbeats: [] as Array<Protocol.Heartbeat>,
      logouts: [] as Array<Protocol.Logout>,
      /** ticket -> the session token it was sent under */
      jobs: new Map<string, string>(),
      /** Sealed sessions: session id -> its secret token; and each of their messages' MAC check. */
      secrets: new Map<string, string>(),
      macs: [] as Array<Trust.MacCheck>,
    }
    const reply = (peerId: string, message: Protocol.ServerMessage) =>
      t.sendToPeer(peerId, Protocol.encodeMessage(message))
    /** As the server answers: in the registration's reply stream when it has a nonce. */
    const answer = (m: Protocol.Register, message: Protocol.ServerMessage) =>
      m.nonce === undefined
        ? reply(m.peer_id, message)
        : t.sendReply(m.nonce, Protocol.encodeMessage(message))
    const onRegister = (m: Protocol.Register) =>
      Effect.gen(function* () {
        seen.registers.push(m)
        assert.strictEqual(m.token, "enroll-secret")
        const reason = options.reject?.(m.peer_id)
        if (reason) {
          yield* answer(m, {
            msg: "register",
            peer_id: m.peer_id,
            token: "none",
            status: "rejected",
            reason,
            ...(m.nonce === undefined ? {} : { nonce: m.nonce }),
          })
          return
        }
        const token = `sess-${m.peer_id}-${seen.registers.length}`
        seen.sessions.set(m.peer_id, token)
        const secret = `secret-${token}`
        if (m.box_key !== undefined) seen.secrets.set(token, secret)
        yield* answer(m, {
          msg: "register",
          peer_id: m.peer_id,
          token,
          status: "accepted",
          heartbeat_ms: options.heartbeatMs,
          ...(m.box_key === undefined
            ? {}
            : { sealed: Trust.seal(m.box_key, JSON.stringify({ token: secret }))! }),
          ...(m.nonce === undefined ? {} : { nonce: m.nonce }),
        })
        for (let j = 0; j < options.jobsPerLogin; j++) {
          const ticket = `${token}-job${j}`
          seen.jobs.set(ticket, token)
          yield* reply(m.peer_id, {
            msg: "job",
            ticket,
            peer_id: m.peer_id,
            token,
            job: { name: "List Files", os: "linux", distro: "debian", command: "ls -al" },
          })
        }
      })
    yield* Effect.gen(function* () {
      while (true) {
        const deliveries = yield* reader.read({ count: 1_000, blockMs: 100 })
        const registers: Array<Protocol.Register> = []
        for (const d of deliveries) {
          const decoded = Protocol.decodePeerMessage(d.payload)
          assert.isTrue(Result.isSuccess(decoded), "every uplink message decodes")
          if (Result.isFailure(decoded)) continue
          const m = decoded.success
          const secret = m.msg === "register" ? undefined : seen.secrets.get(m.token)
          if (secret !== undefined) seen.macs.push(Trust.checkMac(d.payload, secret))
          if (m.msg === "register") registers.push(m)
          else if (m.msg === "result") seen.results.push(m)
          else if (m.msg === "heartbeat") seen.heartbeats.push(m)
          else if (m.msg === "logout") seen.logouts.push(m)
        }
        yield* Effect.forEach(registers, onRegister, { concurrency: 64, discard: true })
        yield* reader.ack(deliveries)
      }
    }).pipe(Effect.forkScoped)
    return { seen, reply }
  })

const waitFor = (what: string, condition: () => boolean, ms = 10_000) =>
  eventuallyTrue(condition, what, { timeoutMs: ms, intervalMs: 10 })

describe("SimulatedFleet (memory transport)", () => {
  it.live("registers every peer, answers every job under its session, heartbeats, and logs out", () =>
    Effect.gen(function* () {
      const server = yield* fakeServer({ heartbeatMs: 100, jobsPerLogin: 2 })
      const fleet = yield* makeSimulatedFleet(config())
      const { seen } = server
      yield* fleet.allAccepted.pipe(Effect.timeout("5 seconds"))
      assert.strictEqual(fleet.online(), 50)
      assert.deepStrictEqual(seen.registers[0], {
        msg: "register",
        peer_id: "sim-t-0",
        token: "enroll-secret",
        server_ip: "127.0.0.1",
        os: "linux",
        distro: "debian",
        hostname: "sim-t-0",
        agent_version: "test",
        nonce: seen.registers[0]!.nonce!,
      })
      assert.isString(seen.registers[0]!.nonce)

      yield* waitFor("a result for every job", () => seen.results.length >= 100)
      assert.strictEqual(new Set(seen.results.map((r) => r.ticket)).size, 100, "each job answered once")
      for (const r of seen.results) {
        assert.strictEqual(r.token, seen.jobs.get(r.ticket), "the result quotes the job's session token")
        assert.strictEqual(r.status, "succeeded")
        assert.strictEqual(r.exit_code, 0)
      }

      yield* waitFor("two heartbeats from every peer", () => {
        const beats = new Map<string, number>()
        for (const h of seen.heartbeats) beats.set(h.peer_id, (beats.get(h.peer_id) ?? 0) + 1)
        return fleet.peerIds.every((id) => (beats.get(id) ?? 0) >= 2)
      })
      for (const h of seen.heartbeats) assert.strictEqual(h.token, seen.sessions.get(h.peer_id))

      // A shutdown: the peer logs out of that session, then comes back with a new one.
      const first = seen.sessions.get("sim-t-0")!
      yield* server.reply("sim-t-0", { msg: "shutdown", token: first, reason: "upgrade" })
      yield* waitFor("a new session after the shutdown", () => seen.sessions.get("sim-t-0") !== first)
      assert.deepStrictEqual(
        seen.logouts.map((l) => [l.peer_id, l.token, l.reason]),
        [["sim-t-0", first, "server_shutdown"]],
      )
      // A session the server forgot: the peer registers again at once.
      const forgotten = seen.sessions.get("sim-t-1")!
      yield* server.reply("sim-t-1", {
        msg: "register",
        peer_id: "sim-t-1",
        token: "none",
        status: "rejected",
        reason: Protocol.RejectReason.sessionExpired,
      })
      yield* waitFor("a new session after session_expired", () => seen.sessions.get("sim-t-1") !== forgotten)
      yield* waitFor("the new sessions' jobs answered", () => seen.results.length >= 104)
      yield* fleet.allAccepted

      yield* fleet.stop(Protocol.LogoutReason.peerShutdown)
      yield* waitFor("every peer logged out", () => seen.logouts.length >= 51)
      const finalLogouts = seen.logouts.slice(1)
      assert.strictEqual(new Set(finalLogouts.map((l) => l.peer_id)).size, 50)
      for (const l of finalLogouts) {
        assert.strictEqual(l.reason, "peer_shutdown")
        assert.strictEqual(l.token, seen.sessions.get(l.peer_id))
      }
      const report = fleet.report()
      assert.strictEqual(report.acceptedPeers, 50)
      assert.isNotNull(report.allAcceptedMs)
      assert.strictEqual(report.counters.shutdowns, 1)
      assert.strictEqual(report.counters.sessionsExpired, 1)
      assert.strictEqual(report.counters.resultsSent, 104)
      assert.strictEqual(report.registerLatency.count, 52)
      assert.strictEqual(fleet.online(), 0)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live(
    "sealed: registers with a box key, unseals its session token, and MACs every message under it",
    () =>
      Effect.gen(function* () {
        const server = yield* fakeServer({ heartbeatMs: 100, jobsPerLogin: 2 })
        const fleet = yield* makeSimulatedFleet(config({ peers: 5, sealed: true }))
        const { seen } = server
        yield* fleet.allAccepted.pipe(Effect.timeout("5 seconds"))
        assert.isTrue(seen.registers.every((r) => typeof r.box_key === "string"))
        yield* waitFor(
          "a result for every job, and heartbeats",
          () => seen.results.length >= 10 && seen.heartbeats.length >= 5,
        )
        assert.isAtLeast(seen.macs.length, 15)
        assert.deepStrictEqual(
          new Set(seen.macs),
          new Set(["valid"]),
          "every message of a sealed session carries its MAC",
        )
      }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("a simulated job takes --job-ms before its result goes out", () =>
    Effect.gen(function* () {
      const { seen } = yield* fakeServer({ heartbeatMs: 5_000, jobsPerLogin: 1 })
      const fleet = yield* makeSimulatedFleet(config({ peers: 5, jobMs: 300 }))
      yield* fleet.allAccepted.pipe(Effect.timeout("5 seconds"))
      const accepted = Date.now()
      yield* waitFor("every result", () => seen.results.length >= 5)
      assert.isAtLeast(Date.now() - accepted, 250)
      for (const r of seen.results) assert.strictEqual(r.finished_at! - r.started_at!, 300)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("a final refusal stops the peer; a 'not now' is retried with backoff", () =>
    Effect.gen(function* () {
      let notNow = 0
      const { seen } = yield* fakeServer({
        heartbeatMs: 5_000,
        jobsPerLogin: 0,
        reject: (peerId) => {
          if (peerId === "sim-t-0") return Protocol.RejectReason.unknownToken
          if (peerId === "sim-t-1" && notNow++ < 2) return Protocol.RejectReason.shuttingDown
          return undefined
        },
      })
      const fleet = yield* makeSimulatedFleet(config({ peers: 3 }))
      const reason = yield* fleet.refused.pipe(Effect.timeout("5 seconds"))
      assert.strictEqual(reason, Protocol.RejectReason.unknownToken)
      yield* waitFor("the retried peer in", () => seen.sessions.has("sim-t-1"))
      yield* Effect.sleep(200)
      const report = fleet.report()
      assert.strictEqual(report.rejectedPeers, 1)
      assert.strictEqual(report.acceptedPeers, 2)
      assert.deepStrictEqual(report.rejectReasons, { "unknown or revoked token": 1, server_shutting_down: 2 })
      assert.strictEqual(seen.registers.filter((r) => r.peer_id === "sim-t-0").length, 1, "never again")
      assert.strictEqual(seen.registers.filter((r) => r.peer_id === "sim-t-1").length, 3)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("--os none sends no os or distro", () =>
    Effect.gen(function* () {
      const { seen } = yield* fakeServer({ heartbeatMs: 5_000, jobsPerLogin: 0 })
      const fleet = yield* makeSimulatedFleet(config({ peers: 2, os: undefined }))
      yield* fleet.allAccepted.pipe(Effect.timeout("5 seconds"))
      for (const r of seen.registers) {
        assert.notProperty(r, "os")
        assert.notProperty(r, "distro")
      }
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("submitAtRate", () => {
  it.live("submits at the rate, to the logged-in peers in turn", () =>
    Effect.gen(function* () {
      const submitted: Array<string> = []
      const peers = ["a", "b", "c"]
      let next = 0
      let counted = 0
      yield* submitAtRate({
        rate: 200,
        submit: (peerId) => Effect.sync(() => submitted.push(peerId)),
        nextPeer: () => peers[next++ % peers.length],
        count: () => counted++,
        tickMs: 20,
      }).pipe(Effect.timeoutOption("500 millis"))
      assert.isAtLeast(submitted.length, 80)
      assert.isAtMost(submitted.length, 110)
      assert.deepStrictEqual(submitted.slice(0, 4), ["a", "b", "c", "a"])
      assert.strictEqual(counted, submitted.length)
    }),
  )
})

describe("SimulatedFleet (Redis transport)", () => {
  const url = testRedisUrl()
  const prefix = testKeyPrefix()
  afterAll(() => deleteKeysWithPrefix(url, prefix))

  it.live(
    "2000 peers over a few inbox reads: all accepted, every job answered",
    () =>
      Effect.gen(function* () {
        const { seen } = yield* fakeServer({ heartbeatMs: 1_000, jobsPerLogin: 1 })
        const fleet = yield* makeSimulatedFleet(config({ peers: 2_000, os: undefined }))
        const ms = yield* fleet.allAccepted.pipe(Effect.timeout("30 seconds"))
        assert.isBelow(ms, 30_000)
        yield* waitFor("every result", () => seen.results.length >= 2_000, 30_000)
        assert.strictEqual(new Set(seen.results.map((r) => r.ticket)).size, 2_000)
        for (const r of seen.results) assert.strictEqual(r.token, seen.jobs.get(r.ticket))
        yield* fleet.stop(Protocol.LogoutReason.peerShutdown)
        yield* waitFor("every logout", () => seen.logouts.length >= 2_000, 30_000)
      }).pipe(Effect.scoped, Effect.provide(TransportRedis.layerRedis({ url, prefix }))),
    60_000,
  )
})
