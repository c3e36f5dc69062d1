import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { JobScheduler, Protocol, Store, StoreMemory, Transport, TransportMemory } from "@picus/core"
import { Effect, Fiber, Layer } from "effect"
import { makeAgent, openStateFile } from "peer"
import { makeGateway } from "../src/Gateway.ts"
import { enrollmentTokensFrom } from "../src/tokens.ts"

const layer = JobScheduler.layer({ maxInFlight: 4 }).pipe(
  Layer.provideMerge(StoreMemory.layerMemory),
  Layer.provideMerge(TransportMemory.layerMemory),
)

const gatewayConfig = {
  serverId: "test-server",
  consumer: "test-server",
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
})

const waitFor = <A, E>(check: Effect.Effect<A | undefined, E>, what: string, ms = 10_000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + ms
    while (Date.now() < deadline) {
      const value = yield* check
      if (value !== undefined) return value
      yield* Effect.sleep("20 millis")
    }
    return yield* Effect.die(new Error(`timed out waiting for ${what}`))
  })

describe("server and peers in one process (in-memory layers)", () => {
  it.live("registers, runs matching jobs for real, records results, and shuts down with a reason", () =>
    Effect.gen(function* () {
      const store = yield* Store
      yield* store.replaceCatalog([
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
      ])
      const gateway = yield* makeGateway(gatewayConfig)
      const server = yield* Effect.forkScoped(gateway.run)

      const a = yield* makeAgent(agentConfig("peer-a", "good-token"))
      const b = yield* makeAgent(agentConfig("peer-b", "good-token"))
      const bad = yield* makeAgent(agentConfig("peer-bad", "wrong-token"))
      const fa = yield* Effect.forkScoped(a.run)
      const fb = yield* Effect.forkScoped(b.run)
      const badExit = yield* bad.run
      assert.deepStrictEqual(badExit, { _tag: "Rejected", reason: "unknown or revoked token" })

      const results = yield* waitFor(
        store.results({ limit: 100 }).pipe(Effect.map((rows) => (rows.length >= 4 ? rows : undefined))),
        "4 results",
      )
      for (const peer of ["peer-a", "peer-b"]) {
        const mine = results.filter((r) => r.peerId === peer)
        assert.deepStrictEqual(mine.map((r) => r.jobName).sort(), ["Echo", "Fail"])
        const echo = mine.find((r) => r.jobName === "Echo")!
        assert.strictEqual(echo.output.trim(), "hello-42")
        assert.strictEqual(echo.status, "succeeded")
        const fail = mine.find((r) => r.jobName === "Fail")!
        assert.strictEqual(fail.status, "failed")
        assert.strictEqual(fail.exitCode, 3)
        assert.strictEqual(fail.output.trim(), "oops")
      }
      assert.isFalse(results.some((r) => r.jobName === "Centos only"))

      yield* gateway.shutdown("Upgrade server")
      const exits = yield* Fiber.joinAll([fa, fb])
      assert.deepStrictEqual(exits, [
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
    }).pipe(Effect.scoped, Effect.provide(layer)),
  )

  it.live("drops malformed uplink messages and keeps serving", () =>
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
    }).pipe(Effect.scoped, Effect.provide(layer)),
  )
})
