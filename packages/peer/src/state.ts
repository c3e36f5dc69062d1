import { randomUUID } from "node:crypto"
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs"
import { hostname } from "node:os"
import { join } from "node:path"
import { Schema } from "effect"

/**
 * What a peer keeps on disk between runs: its id (stable across restarts) and the tickets it has
 * already run, so a ticket delivered twice (or again after a restart) never runs twice.
 */
const PeerState = Schema.Struct({
  peer_id: Schema.String,
  completed: Schema.Array(Schema.String),
})
type PeerState = typeof PeerState.Type

const decodeState = Schema.decodeUnknownOption(Schema.fromJsonString(PeerState))
const encodeState = Schema.encodeSync(Schema.fromJsonString(PeerState))

/** How many completed tickets are remembered. */
const REMEMBERED_TICKETS = 10_000

export interface StateFile {
  readonly peerId: string
  readonly hasRun: (ticket: string) => boolean
  readonly markRun: (ticket: string) => void
}

export const openStateFile = (dir: string, peerIdOverride: string | undefined): StateFile => {
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
  const completed = new Set(state.peer_id === peerId ? state.completed : [])
  const save = () => {
    const tmp = `${path}.${process.pid}.tmp`
    writeFileSync(tmp, encodeState({ peer_id: peerId, completed: [...completed].slice(-REMEMBERED_TICKETS) }))
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
  }
}
