import { randomUUID } from "node:crypto"
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { Protocol } from "@picus/core"
import { Schema } from "effect"

/**
 * The outcome of a job this peer ran: the fields of its `result` message except the token (a
 * result is sent with the token of the session that is current when it is sent).
 */
export const KeptResult = Schema.Struct({
  ticket: Protocol.Id,
  result: Protocol.ResultText,
  exit_code: Schema.NullOr(Protocol.ExitCode),
  status: Protocol.ResultStatus,
  started_at: Schema.optionalKey(Protocol.EpochMillis),
  finished_at: Schema.optionalKey(Protocol.EpochMillis),
  truncated: Schema.optionalKey(Schema.Boolean),
})
export type KeptResult = typeof KeptResult.Type

/** A kept result, and whether Redis took it. */
const StoredResult = Schema.Struct({ ...KeptResult.fields, delivered: Schema.Boolean })
type StoredResult = typeof StoredResult.Type

/**
 * What a peer keeps on disk between runs (`peer.json`): its id (stable across restarts), the
 * tickets it has started (so a ticket never runs twice, even across a restart) and the results of
 * the last jobs it ran, oldest first, each marked once Redis took it (`delivered`). A result not
 * yet delivered is the outbox: it is sent as soon as the peer has a session. A delivered one stays
 * to answer the same ticket delivered again. Files written before `results` existed still load.
 */
const PeerState = Schema.Struct({
  peer_id: Schema.String,
  completed: Schema.Array(Schema.String),
  results: Schema.optionalKey(Schema.Array(StoredResult)),
})
type PeerState = typeof PeerState.Type

const decodeState = Schema.decodeUnknownOption(Schema.fromJsonString(PeerState))
const encodeState = Schema.encodeSync(Schema.fromJsonString(PeerState))

/** How many started tickets are remembered. */
const REMEMBERED_TICKETS = 10_000

export interface StateFileOptions {
  /** Results kept (delivered ones; one not yet delivered is never dropped). Default 1,000. */
  readonly keptResults?: number
  /**
   * Bytes of output kept in all, so the file (rewritten whole on each change) stays small. The
   * oldest delivered results go first. Default 8 MiB.
   */
  readonly keptOutputBytes?: number
}

export interface StateFile {
  readonly peerId: string
  /** True when this peer (this run or an earlier one) started the ticket. */
  readonly hasRun: (ticket: string) => boolean
  /** Remembers, on disk, that the ticket is started: call it before running it. */
  readonly markRun: (ticket: string) => void
  /** Keeps a finished job's result on disk, not yet delivered: call it before sending it. */
  readonly keep: (result: KeptResult) => void
  /** The kept result of a ticket, delivered or not. */
  readonly kept: (ticket: string) => KeptResult | undefined
  /** Redis took the result: it stays kept (for a re-delivery) but is no longer pending. */
  readonly markDelivered: (ticket: string) => void
  /** Kept results not yet delivered, oldest first. */
  readonly pending: () => ReadonlyArray<KeptResult>
}

const withoutDelivered = ({ delivered: _, ...result }: StoredResult): KeptResult => result

export const openStateFile = (
  dir: string,
  peerIdOverride: string | undefined,
  options: StateFileOptions = {},
): StateFile => {
  const maxResults = options.keptResults ?? 1_000
  const maxOutputBytes = options.keptOutputBytes ?? 8 * 1024 * 1024
  mkdirSync(dir, { recursive: true })
  const path = join(dir, "peer.json")
  let state: PeerState = { peer_id: "", completed: [] }
  try {
    const loaded = decodeState(readFileSync(path, "utf8"))
    if (loaded._tag === "Some") state = loaded.value
  } catch {
    // First run: no state yet.
  }
  const peerId = peerIdOverride ?? (state.peer_id || `${hostname()}-${randomUUID().slice(0, 8)}`)
  const samePeer = state.peer_id === peerId
  const completed = new Set(samePeer ? state.completed : [])
  /** In the order they were kept (a Map iterates in insertion order). */
  const results = new Map<string, StoredResult>()
  let outputBytes = 0
  const add = (stored: StoredResult) => {
    const before = results.get(stored.ticket)
    if (before) {
      results.delete(stored.ticket)
      outputBytes -= Buffer.byteLength(before.result)
    }
    results.set(stored.ticket, stored)
    outputBytes += Buffer.byteLength(stored.result)
  }
  /** Drops the oldest delivered results beyond the bounds; pending ones are never dropped. */
  const trim = () => {
    if (results.size <= maxResults && outputBytes <= maxOutputBytes) return
    for (const stored of [...results.values()]) {
      if (results.size <= maxResults && outputBytes <= maxOutputBytes) return
      if (!stored.delivered) continue
      results.delete(stored.ticket)
      outputBytes -= Buffer.byteLength(stored.result)
    }
  }
  for (const stored of samePeer ? (state.results ?? []) : []) add(stored)
  trim()

  const save = () => {
    const tmp = `${path}.${process.pid}.tmp`
    writeFileSync(
      tmp,
      encodeState({
        peer_id: peerId,
        completed: [...completed].slice(-REMEMBERED_TICKETS),
        results: [...results.values()],
      }),
    )
    renameSync(tmp, path)
  }
  save()
  return {
    peerId,
    hasRun: (ticket) => completed.has(ticket),
    markRun: (ticket) => {
      completed.add(ticket)
      if (completed.size > REMEMBERED_TICKETS * 1.1) {
        for (const t of [...completed].slice(0, completed.size - REMEMBERED_TICKETS)) completed.delete(t)
      }
      save()
    },
    keep: (result) => {
      add({ ...result, delivered: false })
      trim()
      save()
    },
    kept: (ticket) => {
      const stored = results.get(ticket)
      return stored && withoutDelivered(stored)
    },
    markDelivered: (ticket) => {
      const stored = results.get(ticket)
      if (!stored || stored.delivered) return
      results.set(ticket, { ...stored, delivered: true })
      trim()
      save()
    },
    pending: () => [...results.values()].filter((r) => !r.delivered).map(withoutDelivered),
  }
}
