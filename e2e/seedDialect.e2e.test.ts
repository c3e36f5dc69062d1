import { execSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { sql } from "slonik"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World } from "./support/env.ts"
import {
  eventually,
  killAll,
  repoRoot,
  runPicus,
  sleep,
  startPnpm,
  startProcess,
} from "./support/processes.ts"

// A peer that knows only the brief's message examples: a bash script over redis-cli that shares
// no code with the project. It registers with the seed's four fields, never heartbeats, answers
// with the seed's five, and must still get its jobs, stay logged in and hear the shutdown.

const GRACE_MS = 600
const SHUTDOWN_REASON = "Upgrade server"

let world: World
beforeEach(async () => {
  world = await makeWorld({
    PICUS_HEARTBEAT_MS: "200",
    PICUS_GRACE_MS: String(GRACE_MS),
    PICUS_DRAIN_MS: "1000",
  })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

/** The built-in catalog's jobs for any os and distro: what a peer that reports neither gets. */
const anyJobs = (
  JSON.parse(readFileSync(join(repoRoot, "packages/server/catalog/default.json"), "utf8")) as {
    jobs: ReadonlyArray<{ name: string; os: string; distro: string; command: string }>
  }
).jobs.filter((j) => j.os === "any" && j.distro === "any")

const createToken = async () => {
  const created = await runPicus(["token", "create", "--name", "seed", "--json"], world.env)
  expect(created.code).toBe(0)
  return (JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!) as { token: string }).token
}

const startSeedPeer = (peerId: string, token: string) =>
  startProcess(peerId, "bash", [join(repoRoot, "e2e/support/seed-peer.sh")], {
    REDIS_URL: world.env.REDIS_URL!,
    PREFIX: world.prefix,
    PEER_ID: peerId,
    TOKEN: token,
    SERVER_IP: "127.0.0.1",
  })

/** The JSON of every `received` line the script printed. */
const received = (lines: ReadonlyArray<string>) =>
  lines
    .filter((l) => l.startsWith("received "))
    .map((l) => JSON.parse(l.slice("received ".length)) as Record<string, unknown>)

describe("a peer that speaks only the seed's messages", () => {
  it("gets the jobs for any os as the seed's register, has every result recorded, stays logged in while silent, and hears the shutdown", async () => {
    expect(anyJobs.length).toBeGreaterThan(0)
    const token = await createToken()
    const server = startPnpm("server", ["--filter", "server", "start"], {
      ...world.env,
      PICUS_SHUTDOWN_REASON: SHUTDOWN_REASON,
    })
    await server.waitForLine(/serving/)
    const peer = startSeedPeer("seed-peer", token)
    await peer.waitForLine(/^accepted$/).catch((e: Error) => {
      throw new Error(`${e.message}\n--- server:\n${server.output()}`)
    })

    const rows = await eventually(
      () =>
        `a result for each of the ${anyJobs.length} jobs\n--- peer:\n${peer.output()}\n--- server:\n${server.output()}`,
      async () => {
        const rows = await world.query<{
          job_name: string
          status: string
          output: string
          exit_code: number | null
        }>(
          sql.unsafe`
            select t.job_name, r.status, r.output, r.exit_code
            from job_results r join tickets t using (ticket)
            where r.peer_id = 'seed-peer' order by t.job_name`,
        )
        return rows.length === anyJobs.length ? rows : undefined
      },
    )
    expect(rows.map((r) => r.job_name)).toEqual(anyJobs.map((j) => j.name).sort())
    for (const row of rows) {
      expect(row.status, row.job_name).toBe("succeeded")
      expect(row.exit_code, row.job_name).toBeNull() // the seed's result has no exit code
    }
    const kernel = anyJobs.find((j) => j.command === "uname -a")
    if (kernel)
      expect(rows.find((r) => r.job_name === kernel.name)?.output).toBe(
        execSync("uname -a", { encoding: "utf8" }),
      )

    // Every job reached it in the seed's own form.
    const jobs = received(peer.lines).filter((m) => "job" in m)
    expect(jobs).toHaveLength(anyJobs.length)
    for (const job of jobs) {
      expect(job.msg).toBe("register")
      // The seed's fields, and last the cluster's signature, which a seed peer ignores.
      expect(Object.keys(job)).toEqual(["msg", "ticket", "peer_id", "token", "job", "sig"])
    }
    expect(peer.output()).not.toContain('"msg":"job"')

    // Silent for several grace periods: it never heartbeats, and that is not a reason to log it out.
    await sleep(4 * GRACE_MS)
    const open = await world.query<{ logout_reason: string | null }>(
      sql.unsafe`select logout_reason from peer_sessions where peer_id = 'seed-peer'`,
    )
    expect(open).toEqual([{ logout_reason: null }])

    server.signalGroup("SIGINT")
    await peer.waitForLine(/^shutdown: /).catch((e: Error) => {
      throw new Error(`${e.message}\n--- server:\n${server.output()}`)
    })
    expect(await peer.exited).toBe(0)
    expect(await server.exited, server.output()).toBe(0)
    const shutdown = received(peer.lines).find((m) => m.msg === "shutdown")
    expect(shutdown).toMatchObject({ msg: "shutdown", token: jobs[0]!.token, reason: SHUTDOWN_REASON })

    const sessions = await world.query<{ logout_reason: string | null }>(
      sql.unsafe`select logout_reason from peer_sessions where peer_id = 'seed-peer'`,
    )
    expect(sessions).toEqual([{ logout_reason: "server_shutdown" }])
    const log = await world.query<{ event: string; peer_id: string | null; reason: string | null }>(
      sql.unsafe`select event, peer_id, reason from registration_log order by id`,
    )
    expect(log.map((r) => [r.event, r.peer_id, r.reason])).toEqual([
      ["login", "seed-peer", null],
      ["shutdown", null, SHUTDOWN_REASON],
      ["logout", "seed-peer", "server_shutdown"],
    ])
  })
})
