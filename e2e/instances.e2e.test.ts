import { join } from "node:path"
import { sql } from "slonik"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { eventually, killAll, type Running, sleep, startPnpm } from "./support/processes.ts"

// Several server processes against one Redis and one PostgreSQL, with peers spread over them.

const here = detectOs()
let world: World
beforeEach(async () => {
  world = await makeWorld({
    PICUS_TOKENS: "tok",
    PICUS_HEARTBEAT_MS: "300",
    PICUS_GRACE_MS: "3000",
    PICUS_LEASE_MS: "2000",
    PICUS_DRAIN_MS: "1000",
  })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const startServer = (id: string) => {
  const catalog = writeCatalog(world.dir, [
    { id: "id", name: "Who", os: here.os, distro: here.distro, command: "echo $((40 + 2))" },
  ])
  return startPnpm(id, ["--filter", "server", "start"], {
    ...world.env,
    PICUS_SERVER_ID: id,
    PICUS_CATALOG: catalog,
  })
}
const startPeer = (peerId: string) =>
  startPnpm(
    peerId,
    ["--filter", "peer", "start", "--peer-id", peerId, "--state-dir", join(world.dir, peerId)],
    {
      ...world.env,
      PICUS_TOKEN: "tok",
    },
  )

interface SessionRow {
  peer_id: string
  server_id: string
  logout_reason: string | null
  open: boolean
}
const sessions = () =>
  world.query<SessionRow>(
    sql.unsafe`select peer_id, server_id, logout_reason, logout_at is null as open from peer_sessions order by login_at`,
  )

/** Four peers registered with server-a, then server-b started beside it. */
const startFleet = async () => {
  const a = startServer("server-a")
  await a.waitForLine(/serving/)
  const peers: Array<Running> = ["p1", "p2", "p3", "p4"].map(startPeer)
  await Promise.all(peers.map((p) => p.waitForLine(/registered as/)))
  const b = startServer("server-b")
  await b.waitForLine(/serving/)
  await sleep(1_500) // heartbeats now reach both instances; server-b hands a's peers' to a
  return { a, b, peers }
}

describe("two server instances", () => {
  it("serve peers side by side, and when one is killed -9 its peers come back on the other", async () => {
    const { a, b } = await startFleet()
    await eventually("every result", async () => {
      const rows = await world.query(sql.unsafe`select 1 from job_results`)
      return rows.length === 4 ? true : undefined
    })
    const before = await sessions()
    expect(before.filter((s) => s.open).length).toBe(4) // heartbeats cross both; nobody flaps
    const victims = before.filter((s) => s.server_id === "server-a").map((s) => s.peer_id)
    expect(victims.length).toBe(4)

    a.signalGroup("SIGKILL")
    const killedAt = Date.now()
    const after = await eventually(
      "server-a's sessions closed and its peers back on server-b",
      async () => {
        const rows = await sessions()
        const lost = rows.filter((s) => s.server_id === "server-a" && s.logout_reason === "server_lost")
        const back = rows.filter((s) => s.server_id === "server-b" && s.open).map((s) => s.peer_id)
        return lost.length === victims.length && back.length === 4 ? rows : undefined
      },
      30_000,
    )
    // Bound: the lease (2 s here) plus a keep-alive period and the peers' backoff.
    console.log(`failover: every peer back on server-b ${Date.now() - killedAt} ms after kill -9`)
    expect(after.filter((s) => s.open).every((s) => s.server_id === "server-b")).toBe(true)
    // Every ticket ended in one terminal state or is still open in a live session; none doubled.
    const tickets = await world.query<{ state: string; n: number }>(
      sql.unsafe`select state, count(*)::int as n from tickets group by state`,
    )
    const results = await world.query<{ n: number; distinct_tickets: number }>(
      sql.unsafe`select count(*)::int as n, count(distinct ticket)::int as distinct_tickets from job_results`,
    )
    expect(results[0]?.n).toBe(results[0]?.distinct_tickets)
    expect(tickets.every((t) => ["succeeded", "cancelled", "queued", "delivered"].includes(t.state))).toBe(
      true,
    )
    b.signalGroup("SIGINT")
    expect(await b.exited, b.output()).toBe(0)
  })

  it("Ctrl+C on one sends its peers away with a shutdown, and they register again with the other", async () => {
    const { a } = await startFleet()
    const onA = (await sessions()).filter((s) => s.server_id === "server-a").map((s) => s.peer_id)
    a.signalGroup("SIGINT")
    expect(await a.exited, a.output()).toBe(0)
    const rows = await eventually(
      "server-a's peers on server-b",
      async () => {
        const rows = await sessions()
        const back = rows.filter((s) => s.server_id === "server-b" && s.open).map((s) => s.peer_id)
        return back.length === 4 ? rows : undefined
      },
      30_000,
    )
    expect(rows.filter((s) => s.server_id === "server-a").map((s) => s.logout_reason)).toEqual(
      onA.map(() => "server_shutdown"),
    )
  })

  it("a paused instance (SIGSTOP past its lease) finds its sessions closed when it wakes, and its late writes change nothing", async () => {
    const { a, b } = await startFleet()
    await eventually("every result", async () => {
      const rows = await world.query(sql.unsafe`select 1 from job_results`)
      return rows.length === 4 ? true : undefined
    })
    a.signalGroup("SIGSTOP")
    // Paused past its lease: server-b has closed its sessions and taken its peers.
    await eventually(
      "server-a's sessions closed and its peers back on server-b",
      async () => {
        const rows = await sessions()
        const lost = rows.filter((s) => s.server_id === "server-a" && s.logout_reason === "server_lost")
        const back = rows.filter((s) => s.server_id === "server-b" && s.open)
        return lost.length === 4 && back.length === 4 ? rows : undefined
      },
      30_000,
    )
    a.signalGroup("SIGCONT")
    await sleep(3_000) // server-a wakes, renews, and looks at its sessions
    const rows = await sessions()
    expect(rows.filter((s) => s.server_id === "server-a").map((s) => s.logout_reason)).toEqual([
      "server_lost",
      "server_lost",
      "server_lost",
      "server_lost",
    ])
    expect(rows.filter((s) => s.open).every((s) => s.server_id === "server-b")).toBe(true)
    const results = await world.query<{ n: number; distinct_tickets: number }>(
      sql.unsafe`select count(*)::int as n, count(distinct ticket)::int as distinct_tickets from job_results`,
    )
    expect(results[0]?.n).toBe(results[0]?.distinct_tickets)
    expect(a.output()).not.toMatch(/Error|defect/i)
    a.signalGroup("SIGINT")
    b.signalGroup("SIGINT")
    expect(await a.exited, a.output()).toBe(0)
    expect(await b.exited, b.output()).toBe(0)
    const after = await sessions()
    expect(
      after.filter((s) => s.server_id === "server-a").every((s) => s.logout_reason === "server_lost"),
    ).toBe(true)
  })
})
