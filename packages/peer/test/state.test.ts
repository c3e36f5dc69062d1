import { spawn, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Trust } from "@picus/core"
import { Effect } from "effect"
import {
  adoptLegacyState,
  lockStateDir,
  openStateFile,
  resolveStateDir,
  StateDirLocked,
  StateFileError,
} from "../src/state.ts"
import { keptResult } from "./support/keptResult.ts"

const freshDir = () => mkdtempSync(join(tmpdir(), "picus-state-"))

const result = keptResult

describe("state file: a peer.json of before the journal", () => {
  it.effect("moves its tickets and results to the journal, and keeps the rest of the file", () =>
    Effect.gen(function* () {
      const dir = freshDir()
      writeFileSync(
        join(dir, "peer.json"),
        JSON.stringify({
          peer_id: "p1",
          completed: ["t0", "t1", "t2", "t3"],
          results: [
            { ...result("t1"), delivered: true },
            { ...result("t2", ""), exit_code: null, status: "timed_out", truncated: true, delivered: false },
          ],
          cluster_key: { key: "k".repeat(43), pinned_from: "first-use" },
          last_register_ts: 1_000,
        }),
        { mode: 0o644 },
      )
      const state = openStateFile(dir, "p1")
      const { journal } = state
      assert.isTrue(journal.hasRun("t0"), "started, no result: known as run")
      assert.isTrue(journal.hasRun("t3"))
      assert.isUndefined(journal.kept("t0"))
      assert.deepStrictEqual(journal.kept("t1"), result("t1"))
      assert.deepStrictEqual(
        journal.pending().map((r) => r.ticket),
        ["t2"],
        "the one not delivered is still to be sent",
      )
      assert.deepStrictEqual(JSON.parse(readFileSync(join(dir, "peer.json"), "utf8")), {
        peer_id: "p1",
        cluster_key: { key: "k".repeat(43), pinned_from: "first-use" },
        last_register_ts: 1_000,
      })
      assert.strictEqual(statSync(join(dir, "peer.json")).mode & 0o777, 0o600)
      assert.deepStrictEqual(state.pinnedClusterKey(), { key: "k".repeat(43), from: "first-use" })
      assert.strictEqual(state.nextRegisterTs(500), 1_001)

      // Sent now; a restart does not move the old file's tickets again, nor forget them.
      journal.sent("t2")
      yield* journal.started("t4")
      journal.close()
      const again = openStateFile(dir, "p1").journal
      assert.deepStrictEqual(again.pending(), [])
      assert.isTrue(again.hasRun("t0"))
      assert.isTrue(again.hasRun("t4"))
      again.close()
    }),
  )

  it("loads a file written before results were kept; another peer id's tickets are not taken", () => {
    const dir = freshDir()
    writeFileSync(join(dir, "peer.json"), JSON.stringify({ peer_id: "old-peer", completed: ["a", "b"] }))
    const state = openStateFile(dir, undefined)
    assert.strictEqual(state.peerId, "old-peer")
    assert.isTrue(state.journal.hasRun("b"))
    assert.isUndefined(state.journal.kept("b"))
    assert.deepStrictEqual(state.journal.pending(), [])
    state.journal.close()

    const other = freshDir()
    writeFileSync(join(other, "peer.json"), JSON.stringify({ peer_id: "someone", completed: ["a"] }))
    const mine = openStateFile(other, "p2")
    assert.isFalse(mine.journal.hasRun("a"))
    assert.strictEqual(JSON.parse(readFileSync(join(other, "peer.json"), "utf8")).peer_id, "p2")
    mine.journal.close()
  })
})

describe("state file: what the peer trusts", () => {
  const modeOf = (path: string) => statSync(path).mode & 0o777

  it("makes an identity key once and keeps it, readable by its owner alone", () => {
    const dir = freshDir()
    const first = openStateFile(dir, "p1")
    assert.isDefined(Trust.signingKeyOf(first.identityKey))
    assert.strictEqual(openStateFile(dir, "p1").identityKey, first.identityKey)
    assert.strictEqual(
      openStateFile(dir, "p2").identityKey,
      first.identityKey,
      "the host's key, whatever the id",
    )
    assert.strictEqual(modeOf(join(dir, "identity.key")), 0o600)
    assert.strictEqual(modeOf(join(dir, "peer.json")), 0o600)
    assert.strictEqual(modeOf(join(dir, "journal.db")), 0o600)
  })

  it("makes an older peer.json private when it rewrites it, and keeps what it held", () => {
    const dir = freshDir()
    writeFileSync(join(dir, "peer.json"), JSON.stringify({ peer_id: "old", completed: ["a"] }), {
      mode: 0o644,
    })
    const state = openStateFile(dir, undefined)
    assert.isTrue(state.journal.hasRun("a"))
    assert.isUndefined(state.pinnedClusterKey())
    assert.strictEqual(modeOf(join(dir, "peer.json")), 0o600)
  })

  it("refuses an identity key file that holds no key, rather than replace it", () => {
    const dir = freshDir()
    writeFileSync(join(dir, "identity.key"), "damaged\n")
    let refused: unknown
    try {
      openStateFile(dir, "p1")
    } catch (error) {
      refused = error
    }
    assert.instanceOf(refused, StateFileError)
    assert.include((refused as StateFileError).message, join(dir, "identity.key"))
    assert.strictEqual(readFileSync(join(dir, "identity.key"), "utf8"), "damaged\n")
  })

  it("keeps the pinned cluster key and gives each registration a ts newer than the last", () => {
    const dir = freshDir()
    const first = openStateFile(dir, "p1")
    first.pinClusterKey({ key: "k".repeat(43), from: "first-use" })
    assert.strictEqual(first.nextRegisterTs(1_000), 1_000)
    assert.strictEqual(first.nextRegisterTs(500), 1_001, "the clock went back")
    const second = openStateFile(dir, "p1")
    assert.deepStrictEqual(second.pinnedClusterKey(), { key: "k".repeat(43), from: "first-use" })
    assert.strictEqual(second.nextRegisterTs(900), 1_002, "kept across a restart")
    assert.strictEqual(second.nextRegisterTs(5_000), 5_000)
  })
})

describe("state folder", () => {
  const env = { HOME: "/home/u" }
  it("is the one given, else a folder per peer id under the default one", () => {
    assert.strictEqual(resolveStateDir({ stateDir: "/srv/p", peerId: "p1", env }), "/srv/p")
    assert.strictEqual(
      resolveStateDir({ stateDir: undefined, peerId: "peer-1", env }),
      "/home/u/.local/state/picus/peers/peer-1",
    )
    assert.strictEqual(
      resolveStateDir({ stateDir: "", peerId: "peer-2", env: { ...env, XDG_STATE_HOME: "/x" } }),
      "/x/picus/peers/peer-2",
    )
    assert.strictEqual(
      resolveStateDir({ stateDir: undefined, peerId: undefined, env }),
      "/home/u/.local/state/picus",
      "no id: the default folder, which keeps the id made up on the first run",
    )
  })

  it("makes one folder name of any peer id", () => {
    const dirOf = (peerId: string) => resolveStateDir({ stateDir: undefined, peerId, env })
    assert.strictEqual(dirOf("a/../b"), "/home/u/.local/state/picus/peers/a%2F..%2Fb")
    assert.strictEqual(dirOf(".."), "/home/u/.local/state/picus/peers/%2E.")
    const long = dirOf("é".repeat(100)).split("/").at(-1)!
    assert.isAtMost(long.length, 120)
    assert.notStrictEqual(
      long,
      dirOf(`${"é".repeat(99)}e`)
        .split("/")
        .at(-1),
    )
  })
})

describe("state folder of an upgraded peer", () => {
  it("takes over the shared file of the old layout when it is its own", () => {
    const legacyDir = freshDir()
    const mine = join(legacyDir, "peers", "p1")
    writeFileSync(
      join(legacyDir, "peer.json"),
      JSON.stringify({ peer_id: "p1", completed: ["t1"], results: [{ ...result("t1"), delivered: false }] }),
    )
    writeFileSync(join(legacyDir, "identity.key"), `${Trust.newPrivateKey()}\n`)
    const identity = readFileSync(join(legacyDir, "identity.key"), "utf8").trim()
    assert.isFalse(adoptLegacyState({ legacyDir, dir: join(legacyDir, "peers", "p2"), peerId: "p2" }))
    assert.isTrue(adoptLegacyState({ legacyDir, dir: mine, peerId: "p1" }))
    const after = openStateFile(mine, "p1")
    assert.isTrue(after.journal.hasRun("t1"))
    assert.strictEqual(after.identityKey, identity, "its identity key moved with it")
    assert.deepStrictEqual(
      after.journal.pending().map((r) => r.ticket),
      ["t1"],
    )
    assert.isFalse(existsSync(join(legacyDir, "peer.json")), "moved, not copied")
    assert.isFalse(adoptLegacyState({ legacyDir, dir: mine, peerId: "p1" }), "once")
    after.journal.close()
  })

  it.effect("takes its journal along when the default folder's peer kept one", () =>
    Effect.gen(function* () {
      const legacyDir = freshDir()
      const before = openStateFile(legacyDir, "p1")
      yield* before.journal.started("t1")
      yield* before.journal.finished(result("t1"))
      before.journal.close()
      const mine = join(legacyDir, "peers", "p1")
      assert.isTrue(adoptLegacyState({ legacyDir, dir: mine, peerId: "p1" }))
      const after = openStateFile(mine, "p1")
      assert.deepStrictEqual(after.journal.kept("t1"), result("t1"))
      assert.isFalse(existsSync(join(legacyDir, "journal.db")), "moved, not copied")
      after.journal.close()
    }),
  )
})

describe("state folder lock", () => {
  it("refuses a folder held by a live process, naming the folder and its pid", () => {
    const dir = freshDir()
    const other = spawn("sleep", ["30"], { stdio: "ignore" })
    try {
      writeFileSync(join(dir, "peer.lock"), `${other.pid}\n`)
      let refused: unknown
      try {
        lockStateDir(dir)
      } catch (error) {
        refused = error
      }
      assert.instanceOf(refused, StateDirLocked)
      assert.strictEqual((refused as StateDirLocked).pid, other.pid)
      assert.include((refused as StateDirLocked).message, dir)
      assert.include((refused as StateDirLocked).message, `pid ${other.pid}`)
      assert.strictEqual(readFileSync(join(dir, "peer.lock"), "utf8").trim(), String(other.pid))
    } finally {
      other.kill("SIGKILL")
    }
  })

  it("takes over a stale lock (its process is dead), and releases its own", () => {
    const dir = freshDir()
    const dead = spawnSync("true").pid
    writeFileSync(join(dir, "peer.lock"), `${dead}\n`)
    const release = lockStateDir(dir)
    assert.strictEqual(readFileSync(join(dir, "peer.lock"), "utf8").trim(), String(process.pid))
    release()
    assert.isFalse(existsSync(join(dir, "peer.lock")))
    writeFileSync(join(dir, "peer.lock"), "not a pid")
    lockStateDir(dir)()
    assert.isFalse(existsSync(join(dir, "peer.lock")), "an unreadable lock is stale too")
  })
})
