import { execSync } from "node:child_process"
import { join } from "node:path"
import { sql } from "slonik"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { eventually, killAll, runPicus, startPnpm } from "./support/processes.ts"

// The brief, end to end: a server and two peers started with the commands a user types, over
// the real Redis and PostgreSQL, running real shell commands.

const here = detectOs()
let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "2000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const catalog = () =>
  writeCatalog(world.dir, [
    { id: "list-files", name: "List Files", os: here.os, distro: here.distro, command: "ls -al /" },
    { id: "kernel", name: "Kernel", os: here.os, distro: here.distro, command: "uname -s" },
    { id: "math", name: "Math", os: here.os, distro: here.distro, command: "echo $((6 * 7))" },
    {
      id: "exit-3",
      name: "Exit Three",
      os: here.os,
      distro: here.distro,
      command: "echo failing >&2; exit 3",
    },
    { id: "elsewhere", name: "Elsewhere", os: "linux", distro: "not-this-distro", command: "echo never" },
  ])

const startServer = (env: Record<string, string> = {}) =>
  startPnpm("server", ["--filter", "server", "start"], { ...world.env, PICUS_CATALOG: catalog(), ...env })

const startPeer = (peerId: string, token: string, ...flags: Array<string>) =>
  startPnpm(
    peerId,
    ["--filter", "peer", "start", "--peer-id", peerId, "--state-dir", join(world.dir, peerId), ...flags],
    {
      ...world.env,
      PICUS_TOKEN: token,
    },
  )

const createToken = async (name: string) => {
  const created = await runPicus(["token", "create", "--name", name, "--json"], world.env)
  expect(created.code).toBe(0)
  const line = created.stdout.split("\n").find((l) => l.startsWith("{"))
  return JSON.parse(line!) as { token: string; id: number }
}

interface ResultRow {
  peer_id: string
  job_name: string
  status: string
  exit_code: number | null
  output: string
}
const resultsOf = (peerId: string) =>
  world.query<ResultRow>(sql.unsafe`
    select r.peer_id, t.job_name, r.status, r.exit_code, r.output
    from job_results r join tickets t using (ticket)
    where r.peer_id = ${peerId} order by t.job_name`)

describe("the seed, end to end", () => {
  it("registers two peers, runs their jobs, rejects a bad token, and shuts down on Ctrl+C with a reason", async () => {
    const { token } = await createToken("e2e")
    const server = startServer({ PICUS_SHUTDOWN_REASON: "Upgrade server" })
    await server.waitForLine(/serving/)
    const a = startPeer("peer-a", token)
    const b = startPeer("peer-b", token, "--exit-on-shutdown")
    const intruder = startPeer("peer-x", "picus_not-a-real-token")

    expect(await intruder.exited).toBe(1)
    expect(intruder.output()).toMatch(/registration rejected: unknown or revoked token/)

    for (const peer of ["peer-a", "peer-b"]) {
      const rows = await eventually(`${peer}'s four results`, async () => {
        const rows = await resultsOf(peer)
        return rows.length === 4 ? rows : undefined
      })
      const byName = new Map(rows.map((r) => [r.job_name, r]))
      expect(byName.get("Kernel")).toMatchObject({
        status: "succeeded",
        exit_code: 0,
        output: `${execSync("uname -s")}`,
      })
      expect(byName.get("Math")?.output).toBe("42\n")
      expect(byName.get("List Files")?.output).toContain("etc")
      expect(byName.get("Exit Three")).toMatchObject({ status: "failed", exit_code: 3, output: "failing\n" })
      expect(byName.has("Elsewhere")).toBe(false)
    }

    server.signalGroup("SIGINT")
    expect(await server.exited, server.output()).toBe(0)
    await a.waitForLine(/server shutdown.*: Upgrade server/)
    await b.waitForLine(/server shutdown.*: Upgrade server/)
    expect(await b.exited).toBe(0)
    expect(a.child.exitCode).toBeNull() // by default a peer waits to register again

    const log = await world.query<{ event: string; peer_id: string | null; reason: string | null }>(
      sql.unsafe`select event, peer_id, reason from registration_log order by id`,
    )
    expect(
      log
        .filter((r) => r.event === "login")
        .map((r) => r.peer_id)
        .sort(),
    ).toEqual(["peer-a", "peer-b"])
    expect(log.find((r) => r.event === "rejected")).toMatchObject({
      peer_id: "peer-x",
      reason: "unknown or revoked token",
    })
    expect(log.find((r) => r.event === "shutdown")?.reason).toBe("Upgrade server")
    const sessions = await world.query<{
      peer_id: string
      logout_reason: string | null
      logout_at: number | null
    }>(sql.unsafe`select peer_id, logout_reason, logout_at from peer_sessions order by peer_id`)
    expect(sessions.map((s) => [s.peer_id, s.logout_reason])).toEqual([
      ["peer-a", "server_shutdown"],
      ["peer-b", "server_shutdown"],
    ])
    // No secret anywhere in the log table.
    const dump = JSON.stringify(
      await world.query(
        sql.unsafe`select event, peer_id, session_id::text, reason, server_id, server_ip from registration_log`,
      ),
    )
    expect(dump).not.toContain(token)
    expect(server.output()).not.toContain(token)
  })

  it("a peer registers again with a new server after a shutdown, by default", async () => {
    const { token } = await createToken("e2e")
    const first = startServer({ PICUS_SHUTDOWN_REASON: "first one goes" })
    await first.waitForLine(/serving/)
    const peer = startPeer("peer-again", token)
    await peer.waitForLine(/registered as peer-again/)
    first.signalGroup("SIGINT")
    expect(await first.exited, first.output()).toBe(0)
    await peer.waitForLine(/server shutdown.*: first one goes/).catch((e: Error) => {
      throw new Error(`${e.message}\n--- server:\n${first.output()}`)
    })
    await peer.waitForLine(/registering again in/)
    const second = startServer()
    await second.waitForLine(/serving/)
    const sessions = await eventually(
      () => `a second session\n--- peer:\n${peer.output()}\n--- server:\n${second.output()}`,
      async () => {
        const rows = await world.query<{ logout_reason: string | null }>(
          sql.unsafe`select logout_reason from peer_sessions where peer_id = 'peer-again' order by login_at`,
        )
        return rows.length === 2 ? rows : undefined
      },
      30_000,
    )
    expect(sessions.map((s) => s.logout_reason)).toEqual(["server_shutdown", null])
  })

  it("a second Ctrl+C stops the server at once, even while it waits for running jobs", async () => {
    const { token } = await createToken("e2e")
    const slow = writeCatalog(
      world.dir,
      [
        {
          id: "slow",
          name: "Slow",
          os: here.os,
          distro: here.distro,
          command: "sleep 30",
          timeout_ms: 60_000,
        },
      ],
      "slow",
    )
    const server = startServer({ PICUS_CATALOG: slow, PICUS_DRAIN_MS: "60000" })
    await server.waitForLine(/serving/)
    const peer = startPeer("peer-slow", token)
    await peer.waitForLine(/registered as peer-slow/)
    await eventually("the slow job to be sent", async () => {
      const rows = await world.query(sql.unsafe`select 1 from tickets where state = 'delivered'`)
      return rows.length > 0 ? true : undefined
    })
    server.signalGroup("SIGINT")
    await server.waitForLine(/notifying 1 peer/)
    await new Promise((r) => setTimeout(r, 1_000))
    const before = Date.now()
    server.signalGroup("SIGINT")
    await server.exited
    expect(Date.now() - before).toBeLessThan(3_000)
    // pnpm may pass the second Ctrl+C on as SIGTERM, and that can reach the server first.
    expect(server.output()).toMatch(/SIG(INT|TERM) again: exiting now/)
  })

  it("revoking a token ends its live sessions at once, and rejects it from then on", async () => {
    const { token, id } = await createToken("soon revoked")
    const server = startServer()
    await server.waitForLine(/serving/)
    const first = startPeer("peer-r", token, "--exit-on-shutdown")
    await first.waitForLine(/registered as peer-r/)
    const revoked = await runPicus(["token", "revoke", String(id)], world.env)
    expect(revoked.code).toBe(0)
    // Its session's Redis user is gone: the peer registers again, and is told the token is revoked.
    expect(await first.exited, first.output()).toBe(1)
    expect(first.output()).toMatch(/registration rejected: unknown or revoked token/)
    const again = startPeer("peer-r", token)
    expect(await again.exited).toBe(1)
    expect(again.output()).toMatch(/registration rejected: unknown or revoked token/)
    const sessions = await world.query<{ logout_reason: string }>(
      sql.unsafe`select logout_reason from peer_sessions where peer_id = 'peer-r'`,
    )
    expect(sessions.map((s) => s.logout_reason)).toEqual(["revoked"])
  })

  it("an operator submits a command to a peer with picus submit; it runs there and is recorded", async () => {
    const { token } = await createToken("e2e")
    const server = startServer()
    await server.waitForLine(/serving/)
    const peer = startPeer("peer-s", token)
    await peer.waitForLine(/registered as peer-s/)
    const submitted = await runPicus(
      ["submit", "peer-s", "echo submitted-$((20 + 1))", "--name", "adhoc", "--json"],
      world.env,
    )
    expect(submitted.code, submitted.stdout).toBe(0)
    const { ticket } = JSON.parse(submitted.stdout.split("\n").find((l) => l.startsWith("{"))!) as {
      ticket: string
    }
    const [row] = await eventually(
      "the submitted job's result",
      async () => {
        const rows = await world.query<{ status: string; output: string }>(
          sql.unsafe`select status, output from job_results where ticket = ${ticket}`,
        )
        return rows.length > 0 ? rows : undefined
      },
      15_000,
    )
    expect(row).toEqual({ status: "succeeded", output: "submitted-21\n" })
    const unknown = await runPicus(["submit", "nobody", "true"], world.env)
    expect(unknown.code).toBe(1)
    expect(unknown.output).toMatch(/no peer nobody has ever registered/)
  })

  it("logs out a peer killed with kill -9 as timeout, after the heartbeat grace", async () => {
    const { token } = await createToken("e2e")
    const server = startServer()
    await server.waitForLine(/serving/)
    const victim = startPeer("peer-k", token)
    await victim.waitForLine(/registered as peer-k/)
    victim.signalGroup("SIGKILL")
    const session = await eventually(
      "the timeout logout",
      async () => {
        const rows = await world.query<{ logout_reason: string | null; duration: unknown }>(
          sql.unsafe`select logout_reason, duration from peer_sessions where peer_id = 'peer-k'`,
        )
        return rows[0]?.logout_reason ? rows[0] : undefined
      },
      15_000,
    )
    expect(session.logout_reason).toBe("timeout")
    // And the server keeps serving: the same peer comes back with a new session.
    const back = startPeer("peer-k", token, "--exit-on-shutdown")
    await back.waitForLine(/registered as peer-k/)
    const count = await world.query<{ n: number }>(
      sql.unsafe`select count(*)::int as n from peer_sessions where peer_id = 'peer-k'`,
    )
    expect(count[0]?.n).toBe(2)
  })
})
