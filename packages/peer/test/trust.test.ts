import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { assert, describe, it } from "@effect/vitest"
import { Protocol, Transport, TransportMemory, Trust } from "@picus/core"
import { eventuallyTrue } from "@picus/core/testing"
import { Effect, Fiber, Result } from "effect"
import { TestClock } from "effect/testing"
import { type AgentConfig, makeAgent } from "../src/Agent.ts"
import { openStateFile } from "../src/state.ts"
import {
  endorsementText,
  makeRefusalLog,
  NoClusterKey,
  parseClusterKeyPin,
  resolveTrust,
} from "../src/trust.ts"
import { makeFakeServer, newClusterKey, sessionExpired } from "./support/fakeServer.ts"

// What the peer trusts: every server message must be signed by the cluster key it pinned. Each
// attack is shown refused by the peer, and, where a signature check is what stops it, succeeding
// against a peer that does not check (`verifySignatures: false`, which only tests set).

type Overrides = Partial<Omit<AgentConfig, "state">>

const newDir = () => mkdtempSync(join(tmpdir(), "picus-trust-"))

const agentOn = (dir: string, overrides: Overrides) =>
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
    ...overrides,
  })

/** A peer pinned to the fake server's key (unless told otherwise), with what it says and warns. */
const setup = (overrides: Overrides = {}, dir = newDir()) =>
  Effect.gen(function* () {
    const server = yield* makeFakeServer()
    const said: Array<string> = []
    const warned: Array<string> = []
    const agent = yield* agentOn(dir, {
      clusterKey: { _tag: "Key", key: server.cluster.publicKey },
      say: (line) => Effect.sync(() => void said.push(line)),
      warn: (line) => Effect.sync(() => void warned.push(line)),
      ...overrides,
    })
    const running = yield* Effect.forkScoped(agent.run)
    return { agent, dir, server, said, warned, running }
  })

const pinnedIn = (dir: string) =>
  (JSON.parse(readFileSync(join(dir, "peer.json"), "utf8")) as { cluster_key?: { key: string } }).cluster_key
    ?.key

/** Results kept but not sent, read beside the agent's own connection to the journal. */
const pendingIn = (dir: string) => {
  const db = new DatabaseSync(join(dir, "journal.db"), { readOnly: true })
  try {
    return (db.prepare("select count(*) as n from results where sent = 0").get() as { n: number }).n
  } finally {
    db.close()
  }
}

const memory = Effect.provide(TransportMemory.layerMemory)

describe("a signed job", () => {
  it.live(
    "runs; the registration is signed by peer_key; session messages carry the session id and a valid MAC, never the session token",
    () =>
      Effect.gen(function* () {
        const { dir, server } = yield* setup()
        const first = yield* server.nextRegistration
        const r1 = first.register
        assert.strictEqual(Trust.checkSignature(first.raw, r1.peer_key!), "valid")
        assert.strictEqual(
          r1.peer_key,
          Trust.signingKeyOf(readFileSync(join(dir, "identity.key"), "utf8"))!.publicKey,
        )
        assert.isString(r1.box_key)
        assert.isNumber(r1.ts)
        const s1 = yield* server.accept(r1)
        yield* server.toPeer(server.job("1", "echo signed-$((6*7))", s1))
        const [result] = yield* server.results(1)
        assert.strictEqual(result?.result, "signed-42\n")
        assert.strictEqual(result?.token, s1.id)
        // The server forgets the session: a second registration, newer, with a box key of its own.
        yield* server.toPeer(sessionExpired)
        const second = yield* server.nextRegistration
        const r2 = second.register
        assert.strictEqual(Trust.checkSignature(second.raw, r2.peer_key!), "valid")
        assert.strictEqual(r2.peer_key, r1.peer_key, "one identity")
        assert.isAbove(r2.ts!, r1.ts!)
        assert.notStrictEqual(r2.box_key, r1.box_key)
        assert.notStrictEqual(r2.nonce, r1.nonce)
        const s2 = yield* server.accept(r2, { heartbeatMs: 50 })
        yield* server.toPeer(server.job("2", "echo again", s2))
        yield* server.results(1)
        yield* Effect.sleep("200 millis")
        yield* server.sentSoFar

        const macs = server.macs()
        assert.isAtLeast(macs.filter((m) => m.msg === "result").length, 2)
        assert.isAtLeast(macs.filter((m) => m.msg === "heartbeat").length, 1)
        assert.deepStrictEqual(
          macs.filter((m) => m.check !== "valid"),
          [],
          "every message of a session carries a valid MAC",
        )
        for (const raw of server.raws()) {
          assert.notInclude(raw, s1.secret, "the session token never goes on the wire")
          assert.notInclude(raw, s2.secret)
        }
        // A MAC under another token does not verify: the check can fail.
        const maced = server.raws().find((raw) => raw.includes('"result"'))!
        assert.strictEqual(Trust.checkMac(maced, "session_other"), "invalid")
      }).pipe(Effect.scoped, memory),
  )
})

/** Sends forged jobs (each touching a marker file), then a genuine one; returns which markers exist. */
const forgedJobs = (overrides: Overrides) =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const { dir, server, warned } = yield* setup(overrides)
    const s = yield* server.acceptNext
    const marker = (name: string) => join(dir, name)
    yield* server.toPeer(server.job("unsigned", `touch ${marker("unsigned")}`, s), "unsigned")
    yield* server.toPeer(server.job("foreign", `touch ${marker("foreign")}`, s), newClusterKey())
    // Signed by the cluster, then changed on the way.
    const tampered = Trust.signPayload(
      Protocol.encodeMessage(server.job("tampered", "echo harmless", s)),
      server.cluster,
    ).replace("echo harmless", `touch ${marker("tampered")}`)
    yield* transport.sendToPeer("p1", tampered)
    // A sealed session's jobs may carry the server's MAC under the session token instead: one under
    // another token, and one made the way the peer MACs its own messages, are forgeries.
    const maced = (ticket: string, command: string, mac: (payload: string) => string) =>
      transport.sendToPeer("p1", mac(Protocol.encodeMessage(server.job(ticket, command, s))))
    yield* maced("othermac", `touch ${marker("othermac")}`, (p) => Trust.macFromServer(p, `${s.secret}x`))
    yield* maced("peermac", `touch ${marker("peermac")}`, (p) => Trust.macPayload(p, s.secret))
    yield* server.toPeer(server.job("genuine", "echo genuine", s))
    yield* maced("genuine-mac", "echo genuine", (p) => Trust.macFromServer(p, s.secret))
    const results = yield* server.results(overrides.verifySignatures === false ? 7 : 2)
    yield* Effect.sleep("200 millis")
    return {
      ran: ["unsigned", "foreign", "tampered", "othermac", "peermac"].filter((name) =>
        existsSync(marker(name)),
      ),
      results: results.map((r) => r.ticket).sort(),
      warned,
    }
  })

describe("forged jobs", () => {
  it.live(
    "an unsigned job, one signed by another key, one changed after signing, and MACs not the server's for this session are refused",
    () =>
      Effect.gen(function* () {
        const { ran, results, warned } = yield* forgedJobs({})
        assert.deepStrictEqual(ran, [], "no forged command ran")
        assert.deepStrictEqual(results, ["genuine", "genuine-mac"])
        assert.isTrue(warned.some((line) => line.includes("(unsigned)")))
        assert.isTrue(warned.some((line) => line.includes("(mis-signed)")))
      }).pipe(Effect.scoped, memory),
  )

  it.live("the attack: a peer that does not check signatures runs them all", () =>
    Effect.gen(function* () {
      const { ran, results } = yield* forgedJobs({ verifySignatures: false })
      assert.deepStrictEqual(ran, ["unsigned", "foreign", "tampered", "othermac", "peermac"])
      assert.deepStrictEqual(results, [
        "foreign",
        "genuine",
        "genuine-mac",
        "othermac",
        "peermac",
        "tampered",
        "unsigned",
      ])
    }).pipe(Effect.scoped, memory),
  )

  it.live("a signed job for another session is refused", () =>
    Effect.gen(function* () {
      const { dir, server, warned } = yield* setup()
      const s = yield* server.acceptNext
      yield* server.toPeer(server.job("other", `touch ${join(dir, "other")}`, "s-other"))
      yield* server.toPeer(server.job("mine", "echo mine", s))
      const results = yield* server.results(1)
      yield* Effect.sleep("200 millis")
      assert.deepStrictEqual(
        results.map((r) => r.ticket),
        ["mine"],
      )
      assert.isFalse(existsSync(join(dir, "other")))
      assert.isTrue(warned.some((line) => line.includes("(another session)")))
    }).pipe(Effect.scoped, memory),
  )

  it.live("a flood of forgeries costs one line per kind, and the count", () =>
    Effect.gen(function* () {
      const { server, warned } = yield* setup({ refusalLogIntervalMs: 60_000 })
      const s = yield* server.acceptNext
      for (let i = 0; i < 50; i++) yield* server.toPeer(server.job(`f${i}`, "true", s), "unsigned")
      yield* server.toPeer(server.job("real", "echo real", s))
      yield* server.results(1)
      assert.strictEqual(warned.filter((line) => line.includes("(unsigned)")).length, 1)
    }).pipe(Effect.scoped, memory),
  )
})

describe("forged shutdowns", () => {
  it.live("an unsigned or foreign-signed shutdown is ignored: the peer keeps running", () =>
    Effect.gen(function* () {
      const { server, running, warned } = yield* setup()
      const s = yield* server.acceptNext
      const shutdown: Protocol.ServerMessage = { msg: "shutdown", token: s.id, reason: "forged" }
      yield* server.toPeer(shutdown, "unsigned")
      yield* server.toPeer(shutdown, newClusterKey())
      yield* server.toPeer(server.job("after", "echo still-here", s))
      const [result] = yield* server.results(1)
      assert.strictEqual(result?.result, "still-here\n")
      assert.isUndefined(running.pollUnsafe(), "still serving")
      assert.notInclude(
        (yield* server.sentSoFar).map((m) => m.msg),
        "logout",
      )
      assert.isTrue(warned.some((line) => line.includes("a shutdown")))
    }).pipe(Effect.scoped, memory),
  )

  it.live("the attack: a peer that does not check signatures stops on a forged shutdown", () =>
    Effect.gen(function* () {
      const { server, running } = yield* setup({ verifySignatures: false })
      const s = yield* server.acceptNext
      yield* server.toPeer({ msg: "shutdown", token: s.id, reason: "forged" }, "unsigned")
      assert.deepStrictEqual(yield* Fiber.join(running), { _tag: "Shutdown", reason: "forged" })
    }).pipe(Effect.scoped, memory),
  )
})

describe("acceptances", () => {
  it.live("an acceptance replayed into a later registration's reply stream is refused", () =>
    Effect.gen(function* () {
      const { server, warned } = yield* setup()
      const r1 = (yield* server.nextRegistration).register
      const old = server.acceptance(r1)
      yield* server.reply(r1.nonce!, old.message)
      yield* server.toPeer(sessionExpired)
      const r2 = (yield* server.nextRegistration).register
      // The first registration's acceptance, as signed then, written where the second's answer goes.
      yield* server.reply(r2.nonce!, old.message)
      yield* Effect.sleep("300 millis")
      assert.isTrue(warned.some((line) => line.includes("(replayed)")))
      yield* server.toPeer(server.job("old", "echo old", old.session))
      const s2 = yield* server.accept(r2)
      yield* server.toPeer(server.job("new", "echo new", s2))
      const results = yield* server.results(1)
      yield* Effect.sleep("200 millis")
      assert.deepStrictEqual(
        results.map((r) => r.ticket),
        ["new"],
      )
    }).pipe(Effect.scoped, memory),
  )

  it.live("an acceptance whose sealed part is not for this registration's box key is refused", () =>
    Effect.gen(function* () {
      const { server, warned, running } = yield* setup()
      const r = (yield* server.nextRegistration).register
      const elsewhere = Trust.seal(Trust.newBoxKeyPair().publicKey, JSON.stringify({ token: "session_x" }))!
      yield* server.accept(r, { sealed: elsewhere })
      yield* Effect.sleep("300 millis")
      assert.isTrue(warned.some((line) => line.includes("(unsealable)")))
      const s = yield* server.accept(r)
      yield* server.toPeer({ msg: "shutdown", token: s.id, reason: "done" })
      assert.deepStrictEqual(yield* Fiber.join(running), { _tag: "Shutdown", reason: "done" })
    }).pipe(Effect.scoped, memory),
  )
})

describe("pinning", () => {
  it.live("trust on first use pins the first server's key, says so, and then refuses another key", () =>
    Effect.gen(function* () {
      const dir = newDir()
      const first = yield* setup({ clusterKey: undefined, trustOnFirstUse: true }, dir)
      assert.isTrue(first.said.some((line) => line.includes("trusting on first use")))
      yield* first.server.acceptNext
      yield* Effect.sleep("100 millis")
      assert.strictEqual(pinnedIn(dir), first.server.cluster.publicKey)
      assert.isTrue(
        first.said.some((line) => line.includes(Trust.fingerprintOf(first.server.cluster.publicKey))),
      )
      yield* Fiber.interrupt(first.running)

      // Restarted, still trusting on first use: the key pinned before is the one it trusts.
      const intruder = newClusterKey()
      const again = yield* setup({ clusterKey: undefined, trustOnFirstUse: true }, dir)
      const r = (yield* again.server.nextRegistration).register
      yield* again.server.accept(r, { signer: intruder, clusterKey: intruder.publicKey })
      yield* Effect.sleep("300 millis")
      assert.isTrue(again.warned.some((line) => line.includes("(mis-signed)")))
      assert.strictEqual(pinnedIn(dir), first.server.cluster.publicKey)
      // A job signed by the intruder is refused too; the pinned server is still heard.
      const s = yield* again.server.accept(r, {
        signer: first.server.cluster,
        clusterKey: first.server.cluster.publicKey,
      })
      yield* again.server.toPeer(again.server.job("x", `touch ${join(dir, "x")}`, s), intruder)
      yield* again.server.toPeer(again.server.job("y", "echo y", s), first.server.cluster)
      const results = yield* again.server.results(1)
      assert.deepStrictEqual(
        results.map((m) => m.ticket),
        ["y"],
      )
      assert.isFalse(existsSync(join(dir, "x")))
    }).pipe(Effect.scoped, memory),
  )

  it.live("a fingerprint pins the key that has it, and only that one", () =>
    Effect.gen(function* () {
      const dir = newDir()
      const cluster = newClusterKey()
      const intruder = newClusterKey()
      const { server, warned, said } = yield* setup(
        { clusterKey: { _tag: "Fingerprint", fingerprint: Trust.fingerprintOf(cluster.publicKey) } },
        dir,
      )
      const r = (yield* server.nextRegistration).register
      yield* server.accept(r, { signer: intruder, clusterKey: intruder.publicKey })
      yield* Effect.sleep("300 millis")
      assert.isTrue(warned.some((line) => line.includes("fingerprint")))
      assert.isUndefined(pinnedIn(dir))
      const s = yield* server.accept(r, { signer: cluster, clusterKey: cluster.publicKey })
      yield* server.toPeer(server.job("1", "echo pinned", s), cluster)
      yield* server.results(1)
      assert.strictEqual(pinnedIn(dir), cluster.publicKey)
      assert.isTrue(said.some((line) => line.includes("pinned cluster key")))
    }).pipe(Effect.scoped, memory),
  )

  it.effect("makeAgent refuses to start with no cluster key given or pinned and no trust on first use", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(agentOn(newDir(), {}))
      assert.instanceOf(error, NoClusterKey)
      assert.include(error.message, "--enroll")
      assert.include(error.message, "--trust-on-first-use")
    }).pipe(memory),
  )
})

describe("key rotation", () => {
  const rotation = (overrides: Overrides) =>
    Effect.gen(function* () {
      const dir = newDir()
      const peer = yield* setup(overrides, dir)
      const { server } = peer
      const old = server.cluster
      const next = newClusterKey()
      const r = (yield* server.nextRegistration).register
      const moved = { signer: next, clusterKey: next.publicKey }
      return { ...peer, dir, old, next, r, moved }
    })

  it.live(
    "an acceptance by a new key the pinned one endorsed re-pins; without the endorsement it is refused",
    () =>
      Effect.gen(function* () {
        const { server, warned, said, dir, old, next, r, moved, running } = yield* rotation({})
        yield* server.accept(r, moved)
        yield* server.accept(r, {
          ...moved,
          endorsement: Trust.signBytes(endorsementText(next.publicKey), next),
        })
        yield* Effect.sleep("300 millis")
        assert.strictEqual(
          warned.filter((line) => line.includes("did not endorse")).length,
          1,
          warned.join("\n"),
        )
        assert.strictEqual(pinnedIn(dir), old.publicKey, "not moved without a valid endorsement")
        assert.isUndefined(running.pollUnsafe())

        const s = yield* server.accept(r, {
          ...moved,
          endorsement: Trust.signBytes(endorsementText(next.publicKey), old),
        })
        yield* server.toPeer(server.job("old-key", `touch ${join(dir, "old-key")}`, s), old)
        yield* server.toPeer(server.job("new-key", "echo new-key", s), next)
        const results = yield* server.results(1)
        assert.deepStrictEqual(
          results.map((m) => m.ticket),
          ["new-key"],
        )
        assert.strictEqual(pinnedIn(dir), next.publicKey)
        assert.isTrue(said.some((line) => line.includes("moved to a new key")))
        assert.isFalse(existsSync(join(dir, "old-key")), "the old key is no longer trusted")
        yield* eventuallyTrue(() => pendingIn(dir) === 0, "the result delivered")
        yield* Fiber.interrupt(running)

        // Restarted with the same key given (an enrollment string keeps the old one): the key it
        // moved to stays pinned.
        const again = yield* setup({ clusterKey: { _tag: "Key", key: old.publicKey } }, dir)
        const r2 = (yield* again.server.nextRegistration).register
        const s2 = yield* again.server.accept(r2, moved)
        yield* again.server.toPeer(again.server.job("after", "echo after", s2), next)
        assert.deepStrictEqual(
          (yield* again.server.results(1)).map((m) => m.ticket),
          ["after"],
        )
      }).pipe(Effect.scoped, memory),
  )

  it.live("the attack: a peer that does not check signatures follows any new key", () =>
    Effect.gen(function* () {
      const { server, dir, next, r, moved } = yield* rotation({ verifySignatures: false })
      const s = yield* server.accept(r, moved)
      yield* server.toPeer(server.job("intruder", `touch ${join(dir, "intruder")}`, s), next)
      yield* server.results(1)
      assert.isTrue(existsSync(join(dir, "intruder")))
    }).pipe(Effect.scoped, memory),
  )
})

describe("registration ts", () => {
  it.effect("comes from the clock, and still grows when the clock steps back", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(1_800_000_000_000)
      const { server } = yield* setup()
      const r1 = (yield* server.nextRegistration).register
      assert.strictEqual(r1.ts, 1_800_000_000_000)
      yield* server.accept(r1)
      yield* TestClock.setTime(1_700_000_000_000) // the host's clock is set back
      yield* server.toPeer(sessionExpired)
      const r2 = (yield* server.nextRegistration).register
      assert.strictEqual(r2.ts, 1_800_000_000_001)
    }).pipe(Effect.scoped, memory),
  )
})

describe("the refusal log", () => {
  it.effect(
    "tells the first refusal of a kind at once and the rest as a count once the interval is over",
    () =>
      Effect.gen(function* () {
        const lines: Array<string> = []
        const log = makeRefusalLog({
          intervalMs: 10_000,
          write: (line) => Effect.sync(() => void lines.push(line)),
        })
        for (let i = 0; i < 5; i++) yield* log.refuse("unsigned", `job ${i}: not signed`)
        yield* log.refuse("mis-signed", `job picus_${"A".repeat(40)}: not signed by the pinned cluster key`)
        assert.strictEqual(lines.length, 2)
        assert.include(lines[0], "job 0")
        assert.notInclude(lines[1], "AAAA", "secrets in what came in are redacted")
        yield* TestClock.adjust("5 seconds")
        yield* log.flush
        assert.strictEqual(lines.length, 2, "not before the interval is over")
        yield* TestClock.adjust("5 seconds")
        yield* log.flush
        assert.deepStrictEqual(lines.slice(2), [
          "refused 4 more server message(s) (unsigned) in the last 10s",
        ])
        yield* log.refuse("unsigned", "job 9: not signed")
        assert.strictEqual(lines.length, 4, "a new interval starts with a line")
      }),
  )
})

describe("configuration", () => {
  it("reads a cluster key or a fingerprint, and says what is wrong with anything else", () => {
    const key = newClusterKey().publicKey
    assert.deepStrictEqual(Result.getOrThrow(parseClusterKeyPin(key)), { _tag: "Key", key })
    const fingerprint = Trust.fingerprintOf(key)
    assert.deepStrictEqual(Result.getOrThrow(parseClusterKeyPin(fingerprint)), {
      _tag: "Fingerprint",
      fingerprint,
    })
    assert.isTrue(Result.isFailure(parseClusterKeyPin("sha256:short")))
    assert.isTrue(Result.isFailure(parseClusterKeyPin("not a key")))
  })

  it("a key pinned before wins while the same pin is given; a new pin given wins over it", () => {
    const a = newClusterKey().publicKey
    const b = newClusterKey().publicKey
    const pinned = { key: b, from: a } // pinned from a, moved to b by a rotation
    const trusted = (given: string | undefined, tofu = false) =>
      Result.getOrThrow(
        resolveTrust({
          given: given === undefined ? undefined : Result.getOrThrow(parseClusterKeyPin(given)),
          trustOnFirstUse: tofu,
          pinned,
        }),
      ).trusted
    assert.deepStrictEqual(trusted(a), { _tag: "Pinned", key: b, from: a })
    assert.deepStrictEqual(trusted(undefined), { _tag: "Pinned", key: b, from: a })
    const c = newClusterKey().publicKey
    assert.deepStrictEqual(trusted(c), { _tag: "Pinned", key: c, from: c })
    assert.isTrue(
      Result.isFailure(resolveTrust({ given: undefined, trustOnFirstUse: false, pinned: undefined })),
    )
  })
})
