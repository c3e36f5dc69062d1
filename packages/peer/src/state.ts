import { createHash, randomUUID } from "node:crypto"
import {
  chmodSync,
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs"
import { homedir, hostname } from "node:os"
import { join } from "node:path"
import { Trust } from "@picus/core"
import { Schema } from "effect"
import { type Journal, type JournalOptions, KeptResult, openJournal } from "./journal.ts"
import type { PinnedClusterKey } from "./trust.ts"

/** A kept result of a peer.json written before the journal, and whether Redis took it. */
const StoredResult = Schema.Struct({ ...KeptResult.fields, delivered: Schema.Boolean })

/**
 * What a peer keeps in `peer.json`: its id (stable across restarts), the cluster key it pinned
 * (with the pin given that led to it) and the `ts` of its last registration. The tickets it
 * started and the results it kept are in the journal beside it (`journal.db`); a file written
 * before the journal holds them here too (`completed`, `results`), and they move to the journal at
 * the first start. Files written before `results` or the trust fields existed still load.
 */
const PeerState = Schema.Struct({
  peer_id: Schema.String,
  completed: Schema.optionalKey(Schema.Array(Schema.String)),
  results: Schema.optionalKey(Schema.Array(StoredResult)),
  cluster_key: Schema.optionalKey(Schema.Struct({ key: Schema.String, pinned_from: Schema.String })),
  last_register_ts: Schema.optionalKey(Schema.Number),
})
type PeerState = typeof PeerState.Type

const decodeState = Schema.decodeUnknownOption(Schema.fromJsonString(PeerState))
const encodeState = Schema.encodeSync(Schema.fromJsonString(PeerState))

/** The journal of started tickets and kept results, beside `peer.json`. */
const JOURNAL_FILE = "journal.db"

/** The peer's identity key, beside `peer.json`: written once, never rewritten. */
const IDENTITY_FILE = "identity.key"

export type StateFileOptions = JournalOptions

export interface StateFile {
  readonly peerId: string
  /** The tickets this peer started and the results it kept (`journal.db`). */
  readonly journal: Journal
  /**
   * This peer's identity key (an Ed25519 seed, base64url): made on its first run and kept in
   * `identity.key`, never rewritten. The server binds the peer id to its public key.
   */
  readonly identityKey: string
  /** The cluster key this peer pinned, if any. */
  readonly pinnedClusterKey: () => PinnedClusterKey | undefined
  readonly pinClusterKey: (pinned: PinnedClusterKey) => void
  /**
   * The `ts` of a new registration, kept: `now`, or one more than the last one if the clock went
   * back, so the server (which refuses a `ts` not newer than the last it accepted) never takes a
   * fresh registration for a replay.
   */
  readonly nextRegisterTs: (now: number) => number
}

/**
 * The folder a peer keeps its state in. An explicit folder (--state-dir, PICUS_STATE_DIR) is used
 * as it is. Otherwise each peer id has a folder of its own under the default one
 * (`$XDG_STATE_HOME/picus`, else `~/.local/state/picus`), `peers/<id>`, so peers started side by
 * side on one host never share a file; a peer with no id given uses the default folder itself,
 * where the id it made up on its first run is kept.
 */
export const resolveStateDir = (entry: {
  readonly stateDir: string | undefined
  readonly peerId: string | undefined
  readonly env?: NodeJS.ProcessEnv
}): string => {
  const env = entry.env ?? process.env
  const given = (value: string | undefined) => (value === undefined || value === "" ? undefined : value)
  const explicit = given(entry.stateDir)
  if (explicit !== undefined) return explicit
  const base = join(
    given(env.XDG_STATE_HOME) ?? join(given(env.HOME) ?? homedir(), ".local", "state"),
    "picus",
  )
  const peerId = given(entry.peerId)
  return peerId === undefined ? base : join(base, "peers", folderName(peerId))
}

/**
 * Before each peer id had its folder, every peer kept `peer.json` in the default folder itself.
 * A peer whose folder has no state yet takes that file over when it is its own (same id), so an
 * upgrade keeps its started tickets and the results it has not delivered.
 */
export const adoptLegacyState = (entry: {
  readonly legacyDir: string
  readonly dir: string
  readonly peerId: string
}): boolean => {
  const legacy = join(entry.legacyDir, "peer.json")
  const target = join(entry.dir, "peer.json")
  if (entry.legacyDir === entry.dir || existsSync(target)) return false
  try {
    const loaded = decodeState(readFileSync(legacy, "utf8"))
    if (loaded._tag !== "Some" || loaded.value.peer_id !== entry.peerId) return false
    mkdirSync(entry.dir, { recursive: true, mode: 0o700 })
    // Its identity key goes with it: the server knows the peer id by it.
    const identity = join(entry.legacyDir, IDENTITY_FILE)
    if (existsSync(identity) && !existsSync(join(entry.dir, IDENTITY_FILE))) {
      renameSync(identity, join(entry.dir, IDENTITY_FILE))
    }
    // So does its journal, if a peer of the new layout kept one there (the -shm file is rebuilt).
    const journal = join(entry.legacyDir, JOURNAL_FILE)
    if (existsSync(journal) && !existsSync(join(entry.dir, JOURNAL_FILE))) {
      renameSync(journal, join(entry.dir, JOURNAL_FILE))
      if (existsSync(`${journal}-wal`)) renameSync(`${journal}-wal`, join(entry.dir, `${JOURNAL_FILE}-wal`))
      rmSync(`${journal}-shm`, { force: true })
    }
    renameSync(legacy, target)
    return true
  } catch {
    return false // none there, or not readable: start afresh
  }
}

/** A peer id as one folder name: no separators, no `.`/`..`, and short enough for any file system. */
const folderName = (peerId: string): string => {
  const encoded = encodeURIComponent(peerId).replace(/^\./, "%2E")
  if (encoded.length <= 120) return encoded
  return `${encoded.slice(0, 100)}-${createHash("sha256").update(peerId).digest("hex").slice(0, 16)}`
}

/** Another live process holds the state folder. */
export class StateDirLocked extends Schema.TaggedError<StateDirLocked>()("StateDirLocked", {
  dir: Schema.String,
  pid: Schema.Int,
  lockFile: Schema.String,
  message: Schema.String,
}) {}

/** The state folder's lock could not be taken for another reason (permissions, a full disk). */
export class StateDirLockError extends Schema.TaggedError<StateDirLockError>()("StateDirLockError", {
  dir: Schema.String,
  message: Schema.String,
  cause: Schema.Defect(),
}) {}

const lockedBy = (dir: string, pid: number, lockFile: string) =>
  new StateDirLocked({
    dir,
    pid,
    lockFile,
    message: `another peer (pid ${pid}) is running on the state folder ${dir}: stop it, or give this peer its own --peer-id or --state-dir (if pid ${pid} is no peer, remove ${lockFile})`,
  })

const lockError = (dir: string, cause: unknown) =>
  new StateDirLockError({
    dir,
    cause,
    message: `cannot lock the state folder ${dir}: ${cause instanceof Error ? cause.message : String(cause)}`,
  })

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    // EPERM: it exists, under another user.
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

const readPid = (file: string): number | undefined => {
  try {
    const pid = Number(readFileSync(file, "utf8").trim())
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/**
 * Takes the state folder for this process: `peer.lock` holds its pid. The file is written whole
 * under another name and linked into place, so it appears atomically and with its pid. A lock
 * whose pid is dead (a peer killed with kill -9) is stale and taken over. Returns the release
 * (also run when the process exits).
 */
export const lockStateDir = (dir: string): (() => void) => {
  const lockFile = join(dir, "peer.lock")
  const mine = `${lockFile}.${process.pid}.${randomUUID().slice(0, 8)}`
  try {
    mkdirSync(dir, { recursive: true })
    writeFileSync(mine, `${process.pid}\n`)
  } catch (cause) {
    throw lockError(dir, cause)
  }
  try {
    for (let tries = 0; ; tries++) {
      try {
        linkSync(mine, lockFile)
        break
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST" || tries >= 5) throw lockError(dir, error)
      }
      const holder = readPid(lockFile)
      if (holder === process.pid) break
      if (holder !== undefined && isAlive(holder)) throw lockedBy(dir, holder, lockFile)
      // Stale: move it aside under a name of our own, and drop it only if it is the one we read
      // (a peer that took the folder meanwhile keeps its lock).
      const aside = `${mine}.stale`
      try {
        renameSync(lockFile, aside)
      } catch {
        continue // gone already
      }
      if (readPid(aside) === holder) rmSync(aside, { force: true })
      else {
        try {
          linkSync(aside, lockFile)
        } catch {
          // Someone else holds it now; the next try says who.
        }
        rmSync(aside, { force: true })
      }
    }
  } finally {
    rmSync(mine, { force: true })
  }
  let released = false
  const release = () => {
    if (released) return
    released = true
    process.off("exit", release)
    if (readPid(lockFile) === process.pid) rmSync(lockFile, { force: true })
  }
  process.on("exit", release)
  return release
}

/** The identity key file cannot be read, or does not hold a key. */
export class StateFileError extends Schema.TaggedError<StateFileError>()("StateFileError", {
  path: Schema.String,
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/** Written whole under another name and renamed into place, readable by its owner alone. */
const writePrivate = (path: string, text: string) => {
  const tmp = `${path}.${process.pid}.tmp`
  writeFileSync(tmp, text, { mode: 0o600 })
  // A leftover file of that name keeps its own mode through writeFileSync.
  chmodSync(tmp, 0o600)
  renameSync(tmp, path)
}

/**
 * The peer's identity key, made on the first run. A file that is there but holds no key is not
 * replaced: the server knows this peer by the key that was in it.
 */
const identityKeyIn = (dir: string): string => {
  const path = join(dir, IDENTITY_FILE)
  let text: string | undefined
  try {
    text = readFileSync(path, "utf8").trim()
  } catch (cause) {
    if ((cause as NodeJS.ErrnoException).code !== "ENOENT") {
      throw new StateFileError({ path, cause, message: `cannot read this peer's identity key ${path}` })
    }
  }
  if (text === undefined) {
    const made = Trust.newPrivateKey()
    writePrivate(path, `${made}\n`)
    return made
  }
  if (Trust.signingKeyOf(text) === undefined) {
    throw new StateFileError({
      path,
      message: `${path} holds no identity key: restore it from a backup, or remove it to make a new one (a server that knows this peer id by its old key then refuses it until an operator lets the id go)`,
    })
  }
  return text
}

export const openStateFile = (
  dir: string,
  peerIdOverride: string | undefined,
  options: StateFileOptions = {},
): StateFile => {
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const path = join(dir, "peer.json")
  let state: PeerState = { peer_id: "" }
  try {
    const loaded = decodeState(readFileSync(path, "utf8"))
    if (loaded._tag === "Some") state = loaded.value
  } catch {
    // First run: no state yet.
  }
  const peerId = peerIdOverride ?? (state.peer_id || `${hostname()}-${randomUUID().slice(0, 8)}`)
  // The trust fields belong to the host, not to the peer id: kept when the id changes.
  let clusterKey = state.cluster_key
  let lastRegisterTs = state.last_register_ts ?? 0
  const identityKey = identityKeyIn(dir)
  const journal = openJournal(join(dir, JOURNAL_FILE), peerId, options)
  if (state.peer_id === peerId && (state.completed !== undefined || state.results !== undefined)) {
    // A file of before the journal: its tickets move there (on disk before peer.json drops them).
    journal.adopt(
      state.completed ?? [],
      (state.results ?? []).map(({ delivered, ...result }) => ({ ...result, sent: delivered })),
    )
  }

  const save = () =>
    writePrivate(
      path,
      encodeState({
        peer_id: peerId,
        ...(clusterKey === undefined ? {} : { cluster_key: clusterKey }),
        ...(lastRegisterTs > 0 ? { last_register_ts: lastRegisterTs } : {}),
      }),
    )
  save()
  return {
    peerId,
    journal,
    identityKey,
    pinnedClusterKey: () => clusterKey && { key: clusterKey.key, from: clusterKey.pinned_from },
    pinClusterKey: ({ key, from }) => {
      clusterKey = { key, pinned_from: from }
      save()
    },
    nextRegisterTs: (now) => {
      lastRegisterTs = Math.max(now, lastRegisterTs + 1)
      save()
      return lastRegisterTs
    },
  }
}
