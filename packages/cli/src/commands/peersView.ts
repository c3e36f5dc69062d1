/**
 * `picus peers`, declared once for the whole program (peers.ts: PostgreSQL and Redis) and the API's
 * (apiProgram.ts), and its listing, printed the same either way.
 */
import type { PeerView } from "@picus/core"
import type { CAC, Command } from "cac"
import { sharedOptions } from "server/flags"
import { printRows } from "server/report"
import { labelsText } from "./runView.ts"

export interface PeersFlags {
  readonly json?: boolean
  readonly apiUrl?: string
}

export const definePeers = (cli: CAC): Command =>
  sharedOptions(
    cli.command(
      "peers [action] [id]",
      "Every peer: os, distro, labels, online, last seen, which instance holds it; add <id> provisions a seed peer",
    ),
  )
    .option("--json", "Machine-readable output")
    .option(
      "--api-url <url>",
      "List them through a server's HTTP API (its --http) instead of PostgreSQL (env PICUS_API_URL; token in PICUS_API_TOKEN); add needs PostgreSQL and Redis",
    )
    .example("picus peers add web-7   # prints the token and Redis login once")
    .example("PICUS_API_URL=http://127.0.0.1:8080 PICUS_API_TOKEN=... picus peers")

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

/** The listing: a table, or with `json` every field and `online`. */
export const printPeers = (peers: ReadonlyArray<PeerView>, json: boolean): void =>
  printRows(
    peers.map((p) =>
      json
        ? { ...p, online: p.heldBy !== null }
        : {
            peer: p.peerId,
            os: p.os,
            distro: p.distro,
            labels: labelsText(p.labels),
            online: p.heldBy !== null,
            "last seen": iso(p.lastSeenAt),
            "held by": p.heldBy,
          },
    ),
    json,
  )
