import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { assert, describe, it } from "@effect/vitest"
import { type Protocol, Transport, TransportError, TransportMemory } from "@picus/core"
import { eventuallyTrue } from "@picus/core/testing"
import { Effect, Fiber, Layer } from "effect"
import { type AgentConfig, makeAgent } from "../src/Agent.ts"
import { openStateFile } from "../src/state.ts"
import { makeFakeServer, sessionExpired } from "./support/fakeServer.ts"

// The peer against a hand-driven server that signs what it sends (see support/fakeServer.ts).

type Overrides = Partial<Omit<AgentConfig, "state">>

/** A peer "p1" whose state is in `dir` (a new agent on the same folder is the peer restarted). */
const makeTestAgent = (dir: string, overrides: Overrides = {}) =>
  makeAgent({
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
    ...overrides,
  })

/** `before` runs on the state folder before the agent opens it. */
const setup = (
  before: (dir: string) => Effect.Effect<void, unknown> = () => Effect.void,
  overrides: Overrides = {},
) =>
  Effect.gen(function* () {
    const dir = mkdtempSync(join(tmpdir(), "picus-agent-"))
    yield* before(dir)
    const server = yield* makeFakeServer()
    const agent = yield* makeTestAgent(dir, {
      clusterKey: { _tag: "Key", key: server.cluster.publicKey },
      ...overrides,
    })
    return { agent, dir, server }
  })

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

/** The memory transport, noting how long each read of an inbox may block. */
const inboxBlocks = () => {
  const blocks: Array<number> = []
  const layer = Layer.effect(
    Transport,
    Effect.map(TransportMemory.makeMemoryTransport, (transport) =>
      Transport.of({
        ...transport,
        inboxReader: (peerId) =>
          Effect.map(transport.inboxReader(peerId), (reader) => ({
            read: (afterId: string, options: { count: number; blockMs: number }) => {
              blocks.push(options.blockMs)
              return reader.read(afterId, options)
            },
          })),
      }),
    ),
  )
  return { blocks, layer }
}

/** The results committed to the journal (read beside the agent's own connection), and whether sent. */
const resultsOnDisk = (dir: string): Array<{ ticket: string; sent: boolean }> => {
  const db = new DatabaseSync(join(dir, "journal.db"), { readOnly: true })
  try {
    return (
      db.prepare("select ticket, sent from results order by seq").all() as Array<{
        ticket: string
        sent: number
      }>
    ).map((r) => ({ ticket: r.ticket, sent: r.sent === 1 }))
  } finally {
    db.close()
  }
}

/** The tickets of the results on disk that are not sent yet. */
const pendingOnDisk = (dir: string): Array<string> =>
  resultsOnDisk(dir)
    .filter((r) => !r.sent)
    .map((r) => r.ticket)

const eventually = (check: () => boolean, what: string) => eventuallyTrue(check, what)

const linesIn = (path: string) => readFileSync(path, "utf8").trim().split("\n").length

describe("peer agent", () => {
  it.live("registers again after the server has been silent too long, and not while it heartbeats", () =>
    Effect.gen(function* () {
      const { agent, server } = yield* setup(undefined, { serverSilenceMs: 600 })
      yield* Effect.forkScoped(agent.run)
      const s1 = yield* server.acceptNext
      const serverHeartbeat: Protocol.ServerMessage = {
        msg: "heartbeat",
        peer_id: "p1",
        token: s1.id,
        server_id: "srv",
      }
      for (let i = 0; i < 6; i++) {
        yield* Effect.sleep("250 millis")
        yield* server.toPeer(serverHeartbeat)
      }
      assert.notInclude(
        (yield* server.sentSoFar).map((m) => m.msg),
        "register",
        "a server that heartbeats is not silent",
      )
      const started = Date.now()
      yield* server.next("register")
      assert.isBelow(Date.now() - started, 5_000)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live(
    "runs a ticket delivered twice once, runs jobs for any distro, refuses one for another distro",
    () =>
      Effect.gen(function* () {
        const { agent, dir, server } = yield* setup()
        yield* Effect.forkScoped(agent.run)
        const s = yield* server.acceptNext
        const marker = join(dir, "ran-foreign")
        yield* server.toPeer(server.job("1", `echo $$ >> ${join(dir, "count")}; echo once`, s))
        yield* server.toPeer(server.job("1", `echo $$ >> ${join(dir, "count")}; echo once`, s))
        yield* server.toPeer(server.job("2", `touch ${marker}`, s, "centos"))
        yield* server.toPeer(server.job("3", "echo three", s))
        yield* server.toPeer(server.job("4", "echo any-distro", s, "any"))
        const anywhere = server.job("5", "echo anywhere", s)
        yield* server.toPeer({ ...anywhere, job: { ...anywhere.job, os: "any", distro: "any" } })
        const results = yield* server.results(5)
        yield* Effect.sleep("300 millis")
        const late = (yield* server.fromPeer).filter((m) => m.msg === "result")
        const all = [...results, ...late]
        assert.deepStrictEqual(all.map((r) => r.ticket).sort(), ["1", "2", "3", "4", "5"])
        const byTicket = new Map(all.map((r) => [r.ticket, r]))
        assert.strictEqual(byTicket.get("1")?.result, "once\n")
        assert.strictEqual(byTicket.get("1")?.token, s.id)
        assert.strictEqual(byTicket.get("2")?.status, "refused")
        assert.isFalse(existsSync(marker), "a job for another distro never runs")
        assert.strictEqual(byTicket.get("3")?.status, "succeeded")
        assert.strictEqual(byTicket.get("4")?.result, "any-distro\n")
        assert.strictEqual(byTicket.get("5")?.result, "anywhere\n")
        // Sent again after it finished (its answer lost, say): answered from the kept result, not
        // run a second time.
        yield* server.toPeer(server.job("1", `echo $$ >> ${join(dir, "count")}; echo once`, s))
        const [again] = yield* server.results(1)
        assert.strictEqual(again?.ticket, "1")
        assert.strictEqual(again?.status, "succeeded")
        assert.strictEqual(again?.result, "once\n")
        assert.strictEqual(readFileSync(join(dir, "count"), "utf8").trim().split("\n").length, 1, "ran once")
      }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("runs the next command while a finished one's result waits to be sent", () => {
    const { control, layer } = flakyUplink()
    return Effect.gen(function* () {
      const { agent, dir, server } = yield* setup(undefined, { concurrency: 1 })
      yield* Effect.forkScoped(agent.run)
      const s = yield* server.acceptNext
      control.down = true
      yield* server.toPeer(server.job("31", `touch ${join(dir, "ran-31")}`, s))
      yield* server.toPeer(server.job("32", `touch ${join(dir, "ran-32")}`, s))
      // One slot: the second command runs once the first has finished, not once its result is sent.
      yield* eventually(() => existsSync(join(dir, "ran-32")), "the second command run")
      yield* eventually(() => pendingOnDisk(dir).length === 2, "both results kept, neither sent")
      assert.deepStrictEqual(pendingOnDisk(dir).sort(), ["31", "32"])
      control.down = false
      const results = yield* server.results(2)
      assert.deepStrictEqual(results.map((r) => r.ticket).sort(), ["31", "32"])
    }).pipe(Effect.scoped, Effect.provide(layer))
  })

  it.live(
    "an idle session's inbox read blocks long, and no longer than until the server's silence is due",
    () =>
      Effect.gen(function* () {
        const quiet = inboxBlocks()
        const idle = yield* Effect.gen(function* () {
          const { agent, server } = yield* setup()
          yield* Effect.forkScoped(agent.run)
          yield* server.acceptNext
          yield* Effect.sleep("1500 millis")
          return [...quiet.blocks]
        }).pipe(Effect.scoped, Effect.provide(quiet.layer))
        // One read, waiting for news: not a wake-up each second.
        assert.deepStrictEqual(idle, [10_000])
        const soon = inboxBlocks()
        const silent = yield* Effect.gen(function* () {
          const { agent, server } = yield* setup(undefined, { serverSilenceMs: 3_000 })
          yield* Effect.forkScoped(agent.run)
          yield* server.acceptNext
          yield* Effect.sleep("500 millis")
          return [...soon.blocks]
        }).pipe(Effect.scoped, Effect.provide(soon.layer))
        assert.lengthOf(silent, 1)
        assert.isAtMost(silent[0] ?? 0, 3_000, "blocks no longer than the server may stay silent")
        assert.isAtLeast(silent[0] ?? 0, 2_000)
      }),
  )

  it.live("trims its inbox of what it has read, once it has read all there was", () =>
    Effect.gen(function* () {
      const transport = yield* Transport
      const { agent, server } = yield* setup()
      yield* Effect.forkScoped(agent.run)
      const s = yield* server.acceptNext
      for (const t of ["21", "22", "23"]) yield* server.toPeer(server.job(t, `echo ${t}`, s))
      yield* server.results(3)
      yield* eventuallyTrue(
        () => Effect.runSync(transport.inboxTail("p1")) === "0-0",
        "the inbox trimmed of the jobs read",
      )
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("answers, without running it, a ticket that an earlier run of the peer started", () =>
    Effect.gen(function* () {
      // As if an earlier run of the peer had crashed while running ticket 7.
      const { agent, dir, server } = yield* setup((dir) => {
        const { journal } = openStateFile(dir, "p1")
        return journal.started("7").pipe(Effect.ensuring(Effect.sync(() => journal.close())))
      })
      yield* Effect.forkScoped(agent.run)
      const s = yield* server.acceptNext
      const marker = join(dir, "ran-again")
      yield* server.toPeer(server.job("7", `touch ${marker}`, s))
      const [result] = yield* server.results(1)
      assert.strictEqual(result?.status, "failed")
      assert.include(result?.result ?? "", "not run again")
      assert.isFalse(existsSync(marker))
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("answers a ticket delivered again in a new session from its kept result, without running it", () =>
    Effect.gen(function* () {
      const { agent, dir, server } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      const s1 = yield* server.acceptNext
      const lines = join(dir, "lines")
      const command = `echo ran >> ${lines}; echo out; exit 3`
      yield* server.toPeer(server.job("5", command, s1))
      const [first] = yield* server.results(1)
      assert.strictEqual(first?.token, s1.id)
      assert.strictEqual(first?.status, "failed")
      assert.strictEqual(first?.exit_code, 3)
      assert.strictEqual(first?.result, "out\n")
      yield* eventually(() => pendingOnDisk(dir).length === 0, "the result kept and marked delivered")
      assert.deepStrictEqual(resultsOnDisk(dir), [{ ticket: "5", sent: true }])
      // The server lost the session: the peer registers again, and the ticket, carried over to the
      // new session, is delivered again with the new session's id.
      yield* server.toPeer(sessionExpired)
      const s2 = yield* server.acceptNext
      yield* server.toPeer(server.job("5", command, s2))
      const [second] = yield* server.results(1)
      assert.deepStrictEqual(second, { ...first, token: s2.id } as Protocol.Result)
      assert.strictEqual(linesIn(lines), 1, "the command ran once")
      assert.isUndefined(running.pollUnsafe(), "still serving")
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("sends a result that could not be sent before a restart once Redis takes it again", () => {
    const { control, layer } = flakyUplink()
    return Effect.gen(function* () {
      const { agent, dir, server } = yield* setup()
      const first = yield* Effect.forkScoped(agent.run)
      const s1 = yield* server.acceptNext
      control.down = true
      const lines = join(dir, "lines")
      const command = `echo ran >> ${lines}; echo kept`
      yield* server.toPeer(server.job("8", command, s1))
      yield* eventually(() => pendingOnDisk(dir).includes("8"), "the result kept on disk, not delivered")
      // The peer stops with its result unsent; Redis comes back; the peer starts again.
      yield* Fiber.interrupt(first)
      control.down = false
      const restarted = yield* makeTestAgent(dir)
      yield* Effect.forkScoped(restarted.run)
      const s2 = yield* server.acceptNext
      const [sent] = yield* server.results(1)
      assert.strictEqual(sent?.ticket, "8")
      assert.strictEqual(sent?.token, s2.id, "sent with the session it has now")
      assert.strictEqual(sent?.status, "succeeded")
      assert.strictEqual(sent?.exit_code, 0)
      assert.strictEqual(sent?.result, "kept\n")
      yield* eventually(() => pendingOnDisk(dir).length === 0, "the result marked delivered")
      // Delivered again by the server (its first copy was for a session it had lost): answered
      // from the kept result, not run again.
      yield* server.toPeer(server.job("8", command, s2))
      const [again] = yield* server.results(1)
      assert.deepStrictEqual(again, sent)
      assert.strictEqual(linesIn(lines), 1, "the command ran once")
    }).pipe(Effect.scoped, Effect.provide(layer))
  })

  it.live("ignores a late session_expired while it waits for the answer to its registration", () =>
    Effect.gen(function* () {
      const { agent, server } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      const { register } = yield* server.nextRegistration
      // Meant for a heartbeat of a session from before this registration.
      yield* server.toPeer(sessionExpired)
      yield* Effect.sleep("200 millis")
      assert.isUndefined(running.pollUnsafe(), "not taken as the answer to the registration")
      yield* server.accept(register)
      // Two heartbeats answered late: the first ends the session and the peer registers again;
      // the second arrives while that registration waits for its answer.
      yield* server.toPeer(sessionExpired)
      yield* server.toPeer(sessionExpired)
      const { register: again } = yield* server.nextRegistration
      yield* Effect.sleep("200 millis")
      assert.isUndefined(running.pollUnsafe(), "not taken as the answer to the new registration")
      const s2 = yield* server.accept(again)
      yield* server.toPeer(server.job("11", "echo back", s2))
      const [result] = yield* server.results(1)
      assert.strictEqual(result?.token, s2.id)
      assert.strictEqual(result?.result, "back\n")
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )

  it.live("exits with the reason when rejected, and on shutdown", () =>
    Effect.gen(function* () {
      const { agent, server } = yield* setup()
      const rejected = yield* Effect.forkScoped(agent.run)
      const { register } = yield* server.nextRegistration
      yield* server.reply(register.nonce!, {
        msg: "register",
        peer_id: "p1",
        token: "none",
        status: "rejected",
        reason: "unknown token",
        nonce: register.nonce!,
      })
      assert.deepStrictEqual(yield* Fiber.join(rejected), { _tag: "Rejected", reason: "unknown token" })

      const again = yield* Effect.forkScoped(agent.run)
      const s2 = yield* server.acceptNext
      yield* server.toPeer({ msg: "shutdown", token: s2.id, reason: "Upgrade server" })
      assert.deepStrictEqual(yield* Fiber.join(again), { _tag: "Shutdown", reason: "Upgrade server" })
      const logout = (yield* server.next("logout")).message as Protocol.Logout
      assert.strictEqual(logout.token, s2.id)
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("rejections that mean not now", () => {
  it.live(
    "too many registrations at once: even a peer that exits on shutdown waits and registers again",
    () =>
      Effect.gen(function* () {
        const { agent, server } = yield* setup()
        const running = yield* Effect.forkScoped(agent.run)
        const first = (yield* server.nextRegistration).register
        yield* server.reply(first.nonce!, {
          msg: "register",
          peer_id: "p1",
          token: "none",
          status: "rejected",
          reason: "too many registrations",
          nonce: first.nonce!,
        })
        const again = (yield* server.nextRegistration).register
        assert.notStrictEqual(again.nonce, first.nonce, "a new registration, not the old one sent again")
        const s = yield* server.accept(again)
        yield* server.toPeer({ msg: "shutdown", token: s.id, reason: "done" })
        assert.deepStrictEqual(yield* Fiber.join(running), { _tag: "Shutdown", reason: "done" })
      }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("registering in another's name", () => {
  it.live("a rejection that answers another registration is ignored", () =>
    Effect.gen(function* () {
      const { agent, server } = yield* setup()
      const running = yield* Effect.forkScoped(agent.run)
      const { register } = yield* server.nextRegistration
      assert.isString(register.nonce)
      // A rejection without this registration's nonce (drawn by a registration with a bad token
      // sent in this peer's name, say): without nonces the peer took it for its own answer.
      yield* server.reply(register.nonce!, {
        msg: "register",
        peer_id: "p1",
        token: "none",
        status: "rejected",
        reason: "unknown or revoked token",
      })
      const s = yield* server.accept(register)
      yield* server.toPeer({ msg: "shutdown", token: s.id, reason: "done" })
      assert.deepStrictEqual(yield* Fiber.join(running), { _tag: "Shutdown", reason: "done" })
    }).pipe(Effect.scoped, Effect.provide(TransportMemory.layerMemory)),
  )
})

describe("state file", () => {
  it.effect("keeps the peer id and the tickets run across restarts", () =>
    Effect.gen(function* () {
      const dir = mkdtempSync(join(tmpdir(), "picus-state-"))
      const first = openStateFile(dir, undefined)
      yield* first.journal.started("t1")
      const second = openStateFile(dir, undefined)
      assert.strictEqual(second.peerId, first.peerId)
      assert.isTrue(second.journal.hasRun("t1"))
      assert.isFalse(second.journal.hasRun("t2"))
      first.journal.close()
      second.journal.close()
    }),
  )
})
