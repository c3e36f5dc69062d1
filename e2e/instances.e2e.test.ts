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
    { id: "slow", name: "Slow", os: here.os, distro: here.distro, command: "sleep 3; echo slow" },
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
interface LeaseRow {
  peer_id: string
  owner_id: string
  epoch: number
  open: boolean
}
const leases = () =>
  world.query<LeaseRow>(
    sql.unsafe`select peer_id, owner_id, epoch, closed_at is null as open from sessions order by peer_id`,
  )
const resultCounts = async () =>
  (
    await world.query<{ n: number; distinct_tickets: number }>(
      sql.unsafe`select count(*)::int as n, count(distinct ticket)::int as distinct_tickets from job_results`,
    )
  )[0]!
const quickResults = async () =>
  (
    await world.query(
      sql.unsafe`select 1 from job_results r join tickets t using (ticket) where t.job_id = 'id'`,
    )
  ).length

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
  it("serve peers side by side, and when one is killed -9 the other takes its sessions over, tickets and all", async () => {
    const { a, b, peers } = await startFleet()
    await eventually("every quick result", async () => ((await quickResults()) === 4 ? true : undefined))
    const before = await sessions()
    expect(before.filter((s) => s.open).length).toBe(4) // heartbeats cross both; nobody flaps
    expect(before.every((s) => s.server_id === "server-a")).toBe(true)

    // The slow jobs are running on the peers: their results come back after server-a is gone.
    a.signalGroup("SIGKILL")
    const killedAt = Date.now()
    await eventually(
      "server-a's sessions held by server-b",
      async () => {
        const rows = await leases()
        return rows.length === 4 && rows.every((r) => r.open && r.owner_id === "server-b" && r.epoch === 2)
          ? rows
          : undefined
      },
      30_000,
    )
    // Bound: the lease (2 s here) plus a keep-alive period (a third of it).
    console.log(`failover: every session held by server-b ${Date.now() - killedAt} ms after kill -9`)
    const counts = await eventually(
      "the slow jobs' results, through server-b",
      async () => {
        const c = await resultCounts()
        return c.n === 8 ? c : undefined
      },
      30_000,
    )
    expect(counts.distinct_tickets).toBe(8)
    const after = await sessions()
    expect(after.length, "no peer had to register again").toBe(4)
    expect(after.every((s) => s.open)).toBe(true)
    for (const peer of peers) expect(peer.output().match(/registered as/g)?.length).toBe(1)
    const tickets = await world.query<{ state: string; n: number }>(
      sql.unsafe`select state, count(*)::int as n from tickets group by state`,
    )
    expect(tickets).toEqual([{ state: "succeeded", n: 8 }])
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

  it("a paused instance (SIGSTOP past its lease) finds its sessions taken over when it wakes, and writes nothing more for them", async () => {
    const { a, b } = await startFleet()
    await eventually("every quick result", async () => ((await quickResults()) === 4 ? true : undefined))
    a.signalGroup("SIGSTOP")
    await eventually(
      "server-a's sessions held by server-b",
      async () => {
        const rows = await leases()
        return rows.length === 4 && rows.every((r) => r.open && r.owner_id === "server-b") ? rows : undefined
      },
      30_000,
    )
    a.signalGroup("SIGCONT")
    await sleep(3_000) // server-a wakes, fails to renew, and lets its sessions go
    expect(a.output()).toMatch(/no longer this instance's session/)
    expect(a.output()).not.toMatch(/Error|defect/i)
    const counts = await eventually(
      "every result",
      async () => {
        const c = await resultCounts()
        return c.n === 8 ? c : undefined
      },
      30_000,
    )
    expect(counts.distinct_tickets).toBe(8)
    a.signalGroup("SIGINT")
    expect(await a.exited, a.output()).toBe(0)
    expect(
      (await sessions()).every((s) => s.open),
      "server-a logged none of them out",
    ).toBe(true)
    b.signalGroup("SIGINT")
    expect(await b.exited, b.output()).toBe(0)
    const logouts = await world.query<{ server_id: string; reason: string }>(
      sql.unsafe`select server_id, reason from registration_log where event = 'logout'`,
    )
    expect(logouts.length).toBeGreaterThanOrEqual(4)
    expect(logouts.every((l) => l.server_id === "server-b")).toBe(true)
  })
})
