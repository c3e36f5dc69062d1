import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Protocol, Transport, TransportMemory } from "@picus/core"
import { Effect, Fiber, Result } from "effect"
import { makeAgent } from "../src/Agent.ts"
import { openStateFile } from "../src/state.ts"

// The peer against a hand-driven server: what arrives in its inbox is written by the test.

/** `before` runs on the state folder before the agent opens it. */
const setup = (before: (dir: string) => void = () => {}) =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const dir = mkdtempSync(join(tmpdir(), "picus-agent-"))
    before(dir)
    const agent = yield* makeAgent({
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
    const job = (ticket: string, command: string, distro = "debian"): Protocol.ServerMessage => ({
      msg: "job",
      ticket,
      peer_id: "p1",
      token: "session-secret",
      job: { name: `job ${ticket}`, os: "linux", distro, command },
    })
    return { agent, dir, fromPeer, toPeer, job }
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

describe("peer agent", () => {
  it.live("runs a ticket delivered twice once, and refuses a job for another distro without running it", () =>
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
      const results = yield* collectResults(fromPeer, 3)
      yield* Effect.sleep("300 millis")
      const late = (yield* fromPeer).filter((m) => m.msg === "result")
      const all = [...results, ...late]
      assert.deepStrictEqual(all.map((r) => r.ticket).sort(), ["1", "2", "3"])
      const byTicket = new Map(all.map((r) => [r.ticket, r]))
      assert.strictEqual(byTicket.get("1")?.result, "once\n")
      assert.strictEqual(byTicket.get("1")?.token, "session-secret")
      assert.strictEqual(byTicket.get("2")?.status, "refused")
      assert.isFalse(existsSync(marker), "a job for another distro never runs")
      assert.strictEqual(byTicket.get("3")?.status, "succeeded")
      // Sent again after it finished (its answer lost, say): answered, not run a second time.
      yield* toPeer(job("1", `echo $$ >> ${join(dir, "count")}; echo once`))
      const [again] = yield* collectResults(fromPeer, 1)
      assert.strictEqual(again?.ticket, "1")
      assert.strictEqual(again?.status, "failed")
      assert.include(again?.result ?? "", "not run again")
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
      yield* fromPeer
      yield* toPeer({
        msg: "register",
        peer_id: "p1",
        token: "none",
        status: "rejected",
        reason: "unknown token",
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
