/**
 * `picus peers` through a server's HTTP API (PICUS_API_URL, a token of any scope in
 * PICUS_API_TOKEN): `GET /api/peers`, printed as the direct way prints it (peersView.ts).
 */
import { type PeerView, UsageError } from "@picus/core"
import { printPeers } from "../commands/peersView.ts"
import { exitThroughApi, request } from "./client.ts"

/** A peer as the API gives it (api.md), in the shape the stores give it. */
interface PeerJson {
  readonly peer_id: string
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agent_version: string | null
  readonly labels: Readonly<Record<string, string>> | null
  readonly held_by: string | null
  readonly session_id: string | null
  readonly last_seen_at: number
}

const viewOf = (p: PeerJson): PeerView => ({
  peerId: p.peer_id,
  os: p.os,
  distro: p.distro,
  hostname: p.hostname,
  agentVersion: p.agent_version,
  labels: p.labels ?? {},
  lastSeenAt: p.last_seen_at,
  heldBy: p.held_by,
  sessionId: p.session_id,
})

/** Lists the peers through the API and exits 0 (2 for a usage mistake, 1 when the API fails). */
export const peersViaApi = (action: string | undefined, json: boolean, url: string): Promise<never> =>
  exitThroughApi(url, async (api) => {
    if (action !== undefined && action !== "list")
      throw new UsageError(
        `picus peers ${action} is not done through the API: run it where PostgreSQL and Redis are reachable, without PICUS_API_URL or --api-url`,
      )
    const answer = await request<{ peers: ReadonlyArray<PeerJson> }>(api, "GET", "/api/peers")
    printPeers(answer.peers.map(viewOf), json)
    return 0
  })
