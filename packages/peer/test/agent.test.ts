import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Protocol, Transport, TransportError, TransportMemory } from "@picus/core"
import { eventuallyTrue } from "@picus/core/testing"
import { Effect, Fiber, Layer, Result } from "effect"
import { makeAgent } from "../src/Agent.ts"
import { openStateFile } from "../src/state.ts"

// The peer against a hand-driven server: what arrives in its inbox is written by the test.

/** A peer "p1" whose state is in `dir` (a new agent on the same folder is the peer restarted). */
const makeTestAgent = (dir: string, overrides: { readonly serverSilenceMs?: number } = {}) =>
  makeAgent({
    ...overrides,
    token: "enroll",
    serverIp: "127.0.0.1",
    os: { os: "linux", distro: "debian", hostname: "h" },
    state: openStateFile(dir, "p1"),
    agentVersion: "test",
    concurrency: 2,
    outputCapBytes: 4_096,
    defaultTimeoutMs: 5_000,
    exitOnShutdown: true,
    registerTimeoutMs: 5_000,
    reconnectBaseMs: 50,
    reconnectMaxMs: 100,
    say: () => Effect.void,
  })

/** `before` runs on the state folder before the agent opens it. */
const setup = (
  before: (dir: string) => void = () => {},
  overrides: { readonly serverSilenceMs?: number } = {},
) =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const dir = mkdtempSync(join(tmpdir(), "picus-agent-"))
    before(dir)
    const agent = yield* makeTestAgent(dir, overrides)
    const uplink = yield* transport.uplinkReader("test-server")
    const fromPeer = Effect.gen(function* () {
      const entries = yield* uplink.read({ count: 10, blockMs: 3_000 })
      return entries.map((e) => {
        const decoded = Protocol.decodePeerMessage(e.payload)
        assert.isTrue(Result.isSuccess(decoded))
        return (decoded as Result.Success<Protocol.PeerMessage, never>).success
      })
    })
    const toPeer = (message: Protocol.ServerMessage) =>
      transport.sendToPeer("p1", Protocol.encodeMessage(message))
    const job = (
      ticket: string,
      command: string,
      distro = "debian",
      token = "session-secret",
    ): Protocol.ServerMessage => ({
      msg: "job",
      ticket,
      peer_id: "p1",
      token,
      job: { name: `job ${ticket}`, os: "linux", distro, command },
    })
    /** What the peer has sent so far, without waiting. */
    const sentSoFar = uplink
      .read({ count: 100, blockMs: 0 })
      .pipe(Effect.map((entries) => entries.map((e) => JSON.parse(e.payload) as { readonly msg: string })))
    return { agent, dir, fromPeer, sentSoFar, toPeer, job }
  })

/** Reads peer messages until `count` results have arrived. */
const collectResults = (
  fromPeer: Effect.Effect<ReadonlyArray<Protocol.PeerMessage>, unknown>,
  count: number,
) =>
  Effect.gen(function* () {
    const results: Array<Protocol.Result> = []
    const deadline = Date.now() + 10_000
    while (results.length < count && Date.now() < deadline) {
      for (const m of yield* fromPeer) if (m.msg === "result") results.push(m)
    }
    return results
  })

/** Reads peer messages until one of this kind arrives (the others read before it are dropped). */
const nextMessage = (fromPeer: Effect.Effect<ReadonlyArray<Protocol.PeerMessage>, unknown>, kind: string) =>
  Effect.gen(function* () {
    const deadline = Date.now() + 10_000
    while (Date.now() < deadline) {
      const found = (yield* fromPeer).find((m) => m.msg === kind)
      if (found) return found
    }
    return assert.fail(`no ${kind} from the peer`)
  })

const accepted = (token: string): Protocol.ServerMessage => ({
  msg: "register",
  peer_id: "p1",
  token,
  status: "accepted",
  heartbeat_ms: 60_000,
})

/** The late answer to a heartbeat of a session the server no longer has. */
const sessionExpired: Protocol.ServerMessage = {
  msg: "register",
  peer_id: "p1",
  token: Protocol.REJECTED_TOKEN,
  status: "rejected",
  reason: Protocol.RejectReason.sessionExpired,
}

/** The memory transport, with an uplink that refuses every message while `control.down`. */
const flakyUplink = () => {
  const control = { down: false }
  const layer = Layer.effect(
    Transport,
    Effect.map(TransportMemory.makeMemoryTransport, (transport) =>
      Transport.of({
        ...transport,
        sendUplink: (payload) =>
          control.down
            ? Effect.fail(new TransportError({ operation: "XADD", message: "connection refused" }))
            : transport.sendUplink(payload),
      }),
    ),
  )
  return { control, layer }
}

/** The tickets of the results in the state file that are not delivered yet. */
const pendingOnDisk = (dir: string): Array<string> => {
  const state = JSON.parse(readFileSync(join(dir, "peer.json"), "utf8")) as {
    results?: Array<{ ticket: string; delivered: boolean }>
  }
  return (state.results ?? []).filter((r) => !r.delivered).map((r) => r.ticket)
}

const eventually = (check: () => boolean, what: string) => eventuallyTrue(check, what)

const linesIn = (path: string) => readFileSync(path, "utf8").trim().split("\n").length

describe("peer agent", () => {
  it.live("registers again after the server has been silent too long, and not while it heartbeats", () =>
    Effect.gen(function* () {
      const { agent, fromPeer, sentSoFar, toPeer } = yield* setup(undefined, { serverSilenceMs: 600 })
      yield* Effect.forkScoped(agent.run)
      yield* nextMessage(fromPeer, "register")
      yield* toPeer(accepted("s1"))
      const serverHeartbeat: Protocol.ServerMessage = {
        msg: "heartbeat",
        peer_id: "p1",
        token: "s1",
        server_id: "srv",
      }
      for (let i = 0; i < 6; i++) {
        yield* Effect.sleep("250 millis")
        yield* toPeer(serverHeartbeat)
      }
      assert.notInclude(
        (yield* sentSoFar).map((m) => m.msg),
        "register",
        "a server that heartbeats is not silent",
      )
      const started = Date.now()
      yield* nextMessage(fromPeer, "register")
      assert.isBelow(Date.now() - started, 5_000)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live(
    "runs a ticket delivered twice once, runs jobs for any distro, refuses one for another distro",
    () =>
      Effect.gen(function* () {
        const { agent, dir, fromPeer, toPeer, job } = yield* setup()
        yield* Effect.forkScoped(agent.run)
        const [register] = yield* fromPeer
        assert.strictEqual(register?.msg, "register")
        yield* toPeer({
          msg: "register",
          peer_id: "p1",
          token: "session-secret",
          status: "accepted",
          heartbeat_ms: 60_000,
        })
        const marker = join(dir, "ran-foreign")
        yield* toPeer(job("1", `echo $$ >> ${join(dir, "count")}; echo once`))
        yield* toPeer(job("1", `echo $$ >> ${join(dir, "count")}; echo once`))
        yield* toPeer(job("2", `touch ${marker}`, "centos"))
        yield* toPeer(job("3", "echo three"))
        yield* toPeer(job("4", "echo any-distro", "any"))
        const anywhere = job("5", "echo anywhere") as Protocol.Job
        yield* toPeer({ ...anywhere, job: { ...anywhere.job, os: "any", distro: "any" } })
        const results = yield* collectResults(fromPeer, 5)
        yield* Effect.sleep("300 millis")
        const late = (yield* fromPeer).filter((m) => m.msg === "result")
        const all = [...results, ...late]
        assert.deepStrictEqual(all.map((r) => r.ticket).sort(), ["1", "2", "3", "4", "5"])
        const byTicket = new Map(all.map((r) => [r.ticket, r]))
        assert.strictEqual(byTicket.get("1")?.result, "once\n")
        assert.strictEqual(byTicket.get("1")?.token, "session-secret")
        assert.strictEqual(byTicket.get("2")?.status, "refused")
        assert.isFalse(existsSync(marker), "a job for another distro never runs")
        assert.strictEqual(byTicket.get("3")?.status, "succeeded")
        assert.strictEqual(byTicket.get("4")?.result, "any-distro\n")
        assert.strictEqual(byTicket.get("5")?.result, "anywhere\n")
        // Sent again after it finished (its answer lost, say): answered from the kept result, not
        // run a second time.
        yield* toPeer(job("1", `echo $$ >> ${join(dir, "count")}; echo once`))
        const [again] = yield* collectResults(fromPeer, 1)
        assert.strictEqual(again?.ticket, "1")
        assert.strictEqual(again?.status, "succeeded")
        assert.strictEqual(again?.result, "once\n")
        assert.strictEqual(readFileSync(join(dir, "count"), "utf8").trim().split("\n").length, 1, "ran once")
      }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("answers, without running it, a ticket that an earlier run of the peer started", () =>
    Effect.gen(function* () {
      // As if an earlier run of the peer had crashed while running ticket 7.
      const { agent, dir, fromPeer, toPeer, job } = yield* setup((dir) =>
        openStateFile(dir, "p1").markRun("7"),
      )
      yield* Effect.forkScoped(agent.run)
      yield* fromPeer
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "session-secret",
        status: "accepted",
        heartbeat_ms: 60_000,
      })
      const marker = join(dir, "ran-again")
      yield* toPeer(job("7", `touch ${marker}`))
      const [result] = yield* collectResults(fromPeer, 1)
      assert.strictEqual(result?.status, "failed")
      assert.include(result?.result ?? "", "not run again")
      assert.isFalse(existsSync(marker))
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("answers a ticket delivered again in a new session from its kept result, without running it", () =>
    Effect.gen(function* () {
      const { agent, dir, fromPeer, toPeer, job } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      yield* nextMessage(fromPeer, "register")
      yield* toPeer(accepted("s1"))
      const lines = join(dir, "lines")
      const command = `echo ran >> ${lines}; echo out; exit 3`
      yield* toPeer(job("5", command, "debian", "s1"))
      const [first] = yield* collectResults(fromPeer, 1)
      assert.strictEqual(first?.token, "s1")
      assert.strictEqual(first?.status, "failed")
      assert.strictEqual(first?.exit_code, 3)
      assert.strictEqual(first?.result, "out\n")
      yield* eventually(() => pendingOnDisk(dir).length === 0, "the result kept and marked delivered")
      assert.strictEqual(JSON.parse(readFileSync(join(dir, "peer.json"), "utf8")).results?.[0]?.ticket, "5")
      // The server lost the session: the peer registers again, and the ticket, carried over to the
      // new session, is delivered again with the new token.
      yield* toPeer(sessionExpired)
      yield* nextMessage(fromPeer, "register")
      yield* toPeer(accepted("s2"))
      yield* toPeer(job("5", command, "debian", "s2"))
      const [second] = yield* collectResults(fromPeer, 1)
      assert.deepStrictEqual(second, { ...first, token: "s2" } as Protocol.Result)
      assert.strictEqual(linesIn(lines), 1, "the command ran once")
      assert.isUndefined(running.pollUnsafe(), "still serving")
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("sends a result that could not be sent before a restart once Redis takes it again", () => {
    const { control, layer } = flakyUplink()
    return Effect.gen(function* () {
      const { agent, dir, fromPeer, toPeer, job } = yield* setup()
      const first = yield* Effect.forkScoped(agent.run)
      yield* nextMessage(fromPeer, "register")
      yield* toPeer(accepted("s1"))
      control.down = true
      const lines = join(dir, "lines")
      const command = `echo ran >> ${lines}; echo kept`
      yield* toPeer(job("8", command, "debian", "s1"))
      yield* eventually(() => pendingOnDisk(dir).includes("8"), "the result kept on disk, not delivered")
      // The peer stops with its result unsent; Redis comes back; the peer starts again.
      yield* Fiber.interrupt(first)
      control.down = false
      const restarted = yield* makeTestAgent(dir)
      yield* Effect.forkScoped(restarted.run)
      yield* nextMessage(fromPeer, "register")
      yield* toPeer(accepted("s2"))
      const [sent] = yield* collectResults(fromPeer, 1)
      assert.strictEqual(sent?.ticket, "8")
      assert.strictEqual(sent?.token, "s2", "sent with the session it has now")
      assert.strictEqual(sent?.status, "succeeded")
      assert.strictEqual(sent?.exit_code, 0)
      assert.strictEqual(sent?.result, "kept\n")
      yield* eventually(() => pendingOnDisk(dir).length === 0, "the result marked delivered")
      // Delivered again by the server (its first copy was for a session it had lost): answered
      // from the kept result, not run again.
      yield* toPeer(job("8", command, "debian", "s2"))
      const [again] = yield* collectResults(fromPeer, 1)
      assert.deepStrictEqual(again, sent)
      assert.strictEqual(linesIn(lines), 1, "the command ran once")
    }).pipe(Effect.scoped, Effect.provide(layer))
  })

  it.live("ignores a late session_expired while it waits for the answer to its registration", () =>
    Effect.gen(function* () {
      const { agent, fromPeer, toPeer, job } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      yield* nextMessage(fromPeer, "register")
      // Meant for a heartbeat of a session from before this registration.
      yield* toPeer(sessionExpired)
      yield* Effect.sleep("200 millis")
      assert.isUndefined(running.pollUnsafe(), "not taken as the answer to the registration")
      yield* toPeer(accepted("s1"))
      // Two heartbeats answered late: the first ends the session and the peer registers again;
      // the second arrives while that registration waits for its answer.
      yield* toPeer(sessionExpired)
      yield* toPeer(sessionExpired)
      yield* nextMessage(fromPeer, "register")
      yield* Effect.sleep("200 millis")
      assert.isUndefined(running.pollUnsafe(), "not taken as the answer to the new registration")
      yield* toPeer(accepted("s2"))
      yield* toPeer(job("11", "echo back", "debian", "s2"))
      const [result] = yield* collectResults(fromPeer, 1)
      assert.strictEqual(result?.token, "s2")
      assert.strictEqual(result?.result, "back\n")
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("ignores jobs that do not carry its session token", () =>
    Effect.gen(function* () {
      const { agent, fromPeer, toPeer, job } = yield* setup()
      yield* Effect.forkScoped(agent.run)
      yield* fromPeer
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "session-secret",
        status: "accepted",
        heartbeat_ms: 60_000,
      })
      yield* toPeer({ ...(job("9", "echo forged") as Protocol.Job), token: "someone-else" })
      yield* toPeer(job("10", "echo real"))
      const results = yield* collectResults(fromPeer, 1)
      assert.deepStrictEqual(
        results.map((r) => r.ticket),
        ["10"],
      )
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("exits with the reason when rejected, and on shutdown", () =>
    Effect.gen(function* () {
      const { agent, fromPeer, toPeer } = yield* setup()
      const rejected = yield* Effect.forkScoped(agent.run)
      const [register] = yield* fromPeer
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "none",
        status: "rejected",
        reason: "unknown token",
        nonce: (register as Protocol.Register).nonce!,
      })
      assert.deepStrictEqual(yield* Fiber.join(rejected), {
        _tag: "Rejected",
        reason: "unknown token",
      })

      const again = yield* Effect.forkScoped(agent.run)
      yield* fromPeer
      yield* toPeer({ msg: "register", peer_id: "p1", token: "s2", status: "accepted", heartbeat_ms: 60_000 })
      yield* toPeer({ msg: "shutdown", token: "s2", reason: "Upgrade server" })
      assert.deepStrictEqual(yield* Fiber.join(again), {
        _tag: "Shutdown",
        reason: "Upgrade server",
      })
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("registering in another's name", () => {
  it.live("a rejection drawn by someone else's registration in the peer's name is ignored", () =>
    Effect.gen(function* () {
      const { agent, fromPeer, toPeer } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      const [register] = yield* fromPeer
      assert.isString((register as Protocol.Register).nonce)
      // What the server answers a registration with a bad token sent under this peer's id, without
      // this peer's nonce: without nonces the peer took it for its own answer and gave up for good.
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "none",
        status: "rejected",
        reason: Protocol.RejectReason.unknownToken,
      })
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "s1",
        status: "accepted",
        heartbeat_ms: 60_000,
        nonce: (register as Protocol.Register).nonce!,
      })
      yield* toPeer({ msg: "shutdown", token: "s1", reason: "done" })
      assert.deepStrictEqual(yield* Fiber.join(running), { _tag: "Shutdown", reason: "done" })
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("state file", () => {
  it("keeps the peer id and the tickets run across restarts", () => {
    const dir = mkdtempSync(join(tmpdir(), "picus-state-"))
    const first = openStateFile(dir, undefined)
    first.markRun("t1")
    const second = openStateFile(dir, undefined)
    assert.strictEqual(second.peerId, first.peerId)
    assert.isTrue(second.hasRun("t1"))
    assert.isFalse(second.hasRun("t2"))
  })
})
