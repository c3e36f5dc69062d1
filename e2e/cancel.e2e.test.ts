import { randomInt } from "node:crypto"
import { join } from "node:path"
import { sql } from "slonik"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import {
  eventually,
  killAll,
  type Running,
  repoRoot,
  runPicus,
  sleep,
  sleepsWith,
  startPicus,
  startProcess,
} from "./support/processes.ts"

// Cancel, live output and the feed, with a real server, a real peer and ./picus as an operator
// types it.

const here = detectOs()

let world: World
let watchJson: Running
let watchResults: Running

const stateOf = async (ticket: string) =>
  (await world.query<{ state: string }>(sql.unsafe`select state from tickets where ticket = ${ticket}`))[0]
    ?.state

const submit = async (command: string, peer = "p1"): Promise<string> => {
  const submitted = await runPicus(["submit", peer, command, "--json", "--timeout-ms", "60000"], world.env)
  expect(submitted.code, submitted.output).toBe(0)
  return String(JSON.parse(submitted.stdout).ticket)
}

beforeAll(async () => {
  world = await makeWorld({ PICUS_TOKENS: "tok", PICUS_HEARTBEAT_MS: "1000" })
  const catalog = writeCatalog(world.dir, [
    { id: "hello", name: "Hello", os: here.os, distro: here.distro, command: "echo hello" },
  ])
  const server = startPicus("server", ["server"], { ...world.env, PICUS_CATALOG: catalog })
  await server.waitForLine(/serving/)
  // Listening before the peer registers: the feed is at-most-once, nothing is kept for later.
  watchJson = startPicus("watch --json", ["watch", "--json"], world.env)
  watchResults = startPicus("watch results", ["watch", "--event", "result", "--peer", "p1"], world.env)
  await watchJson.waitForLine(/watching the feed/)
  await watchResults.waitForLine(/watching the feed/)
  const peer = startPicus("peer", ["peer", "--peer-id", "p1", "--state-dir", join(world.dir, "p1")], {
    ...world.env,
    PICUS_TOKEN: "tok",
  })
  await peer.waitForLine(/registered as p1/)
}, 90_000)

afterAll(async () => {
  await killAll()
  await world?.close()
})

describe("picus watch", () => {
  it("shows the peer's registration and its job's result, as JSON or filtered lines", async () => {
    const events = async () =>
      watchJson.lines.flatMap((line) => {
        try {
          return [JSON.parse(line) as { event: string; peer_id?: string; status?: string; name?: string }]
        } catch {
          return []
        }
      })
    await eventually("a registration and a result on the feed", async () => {
      const seen = await events()
      const registered = seen.some((e) => e.event === "registered" && e.peer_id === "p1")
      const result = seen.some((e) => e.event === "result" && e.peer_id === "p1" && e.name === "Hello")
      return registered && result ? true : undefined
    })
    await watchResults.waitForLine(/ result {2}p1 {2}ticket \d+ Hello succeeded exit 0 "hello"/)
    expect(
      watchResults.lines.some((l) => / registered /.test(l)),
      watchResults.output(),
    ).toBe(false)
  })
})

describe("picus watch whose reader went away", () => {
  it("ends with 141, as a Unix tool killed by SIGPIPE does (`picus watch | head -1`)", async () => {
    const watch = startPicus("watch into a closed pipe", ["watch", "--json"], world.env)
    await watch.waitForLine(/watching the feed/)
    // The reader's end of stdout closed: the next event it writes meets EPIPE.
    watch.child.stdout?.destroy()
    await submit("echo into-the-void")
    const code = await Promise.race([watch.exited, sleep(30_000).then(() => "still running")])
    expect(code, watch.output()).toBe(141)
  })
})

describe("picus ticket --follow", () => {
  it("shows output before the job ends, then its final status; exit 0 when it succeeded", async () => {
    const ticket = await submit("echo start; for i in 1 2 3 4 5; do sleep 1; echo tick $i; done; echo end")
    const follow = startPicus("follow", ["ticket", ticket, "--follow"], world.env)
    await follow.waitForLine(/^tick \d$/)
    // Seen while PostgreSQL still has the ticket open: it came live, not from the stored result.
    expect(await stateOf(ticket)).toBe("delivered")
    expect(await follow.exited, follow.output()).toBe(0)
    const out = follow.lines
    // What came before the follower subscribed is gone from the feed (the note says so); the rest
    // shows once each, the end from the stored output if it came after the last chunk.
    expect(out).toContain("tick 5")
    expect(out).toContain("end")
    for (const line of ["tick 4", "tick 5", "end"])
      expect(
        out.filter((l) => l === line),
        `${line} once`,
      ).toHaveLength(1)
    expect(follow.output()).toMatch(new RegExp(`ticket ${ticket} \\(p1\\) succeeded \\(exit 0\\)`))
  })

  it("picus run --follow prints the run's output as it comes, each line prefixed with its peer", async () => {
    const follow = startPicus(
      "run --follow",
      ["run", "--peer", "p1", "--follow", "--", "for i in 1 2 3; do echo step $i; sleep 1; done"],
      world.env,
    )
    await follow.waitForLine(/^p1: step 2$/)
    const [open] = await world.query<{ count: number }>(
      sql.unsafe`select count(*)::int as count from tickets where command like 'for i in 1 2 3%' and finished_at is null`,
    )
    expect(open?.count, "seen while the job still runs").toBe(1)
    expect(await follow.exited, follow.output()).toBe(0)
    expect(follow.lines).toContain("p1: step 3")
  })

  it("exits 1 when the job failed", async () => {
    const ticket = await submit("echo oops; exit 3")
    const follow = await runPicus(["ticket", ticket, "--follow"], world.env)
    expect(follow.code, follow.output).toBe(1)
    expect(follow.output).toContain("oops")
    expect(follow.output).toContain("failed (exit 3)")
  })
})

describe("picus cancel", () => {
  it("kills a running job's whole process group; the ticket ends cancelled with who and why", async () => {
    const marker = `30.${randomInt(1e9, 1e10 - 1)}`
    const ticket = await submit(`echo started; sleep ${marker} & sleep ${marker}; echo never`)
    await eventually("both sleeps running", async () => (sleepsWith(marker) === 2 ? true : undefined))
    expect(await stateOf(ticket)).toBe("delivered")
    const cancelled = await runPicus(
      ["cancel", ticket, "--by", "alice", "--reason", "wrong host", "--json"],
      world.env,
    )
    expect(cancelled.code, cancelled.output).toBe(0)
    expect(JSON.parse(cancelled.stdout)).toMatchObject({ ticket, outcome: "requested", state: "cancelled" })
    const [row] = await world.query<{ state: string; close_reason: string; status: string; output: string }>(
      sql.unsafe`select t.state, t.close_reason, r.status, r.output
        from tickets t join job_results r using (ticket) where t.ticket = ${ticket}`,
    )
    expect(row).toEqual({
      state: "cancelled",
      close_reason: "cancelled by alice: wrong host",
      status: "cancelled",
      output: "started\n",
    })
    await eventually("no sleep left behind", async () => (sleepsWith(marker) === 0 ? true : undefined), 5_000)
    expect(await watchJson.waitForLine(new RegExp(`"event":"cancelled".*"ticket":"${ticket}"`))).toContain(
      "cancelled by alice: wrong host",
    )
  })

  it("cancels a run: its running job is killed, and the run closes", async () => {
    const marker = `30.${randomInt(1e9, 1e10 - 1)}`
    const started = await runPicus(["run", "--peer", "p1", "--no-wait", "--", `sleep ${marker}`], world.env)
    expect(started.code, started.output).toBe(0)
    const runId = started.stdout.trim()
    expect(runId).toMatch(/^r\d+$/)
    await eventually("the run's sleep running", async () => (sleepsWith(marker) === 1 ? true : undefined))
    const cancelled = await runPicus(["cancel", runId, "--by", "bob", "--reason", "rollback"], world.env)
    expect(cancelled.code, cancelled.output).toBe(0)
    expect(cancelled.stdout).toMatch(/\(p1\): cancelled/)
    const rows = await world.query<{ state: string; close_reason: string }>(
      sql.unsafe`select state, close_reason from tickets where run_id = ${runId}`,
    )
    expect(rows).toEqual([{ state: "cancelled", close_reason: "cancelled by bob: rollback" }])
    await eventually("no sleep left behind", async () => (sleepsWith(marker) === 0 ? true : undefined), 5_000)
    await eventually("the run closed", async () => {
      const [run] = await world.query<{ closed: boolean }>(
        sql.unsafe`select closed_at is not null as closed from runs where run_id = ${runId}`,
      )
      return run?.closed ? true : undefined
    })
    const again = await runPicus(["cancel", runId], world.env)
    expect(again.code, again.output).toBe(0)
    expect(again.stdout).toContain(`run ${runId}: no open ticket; nothing to cancel`)
    const unknown = await runPicus(["cancel", "r999999999"], world.env)
    expect(unknown.code, unknown.output).toBe(1)
    expect(unknown.stdout).toContain("no such run")
  })

  it("says a ticket that had ended has nothing to cancel, and exits 1", async () => {
    const ticket = await submit("echo quick")
    await eventually("the ticket ended", async () =>
      (await stateOf(ticket)) === "succeeded" ? true : undefined,
    )
    const again = await runPicus(["cancel", ticket], world.env)
    expect(again.code, again.output).toBe(1)
    expect(again.stdout).toContain(`ticket ${ticket} (p1): had already ended succeeded; nothing to cancel`)
    expect(await stateOf(ticket)).toBe("succeeded")
    const unknown = await runPicus(["cancel", "999999999"], world.env)
    expect(unknown.code, unknown.output).toBe(1)
    expect(unknown.stdout).toContain("no such ticket")
  })

  it("a peer of the seed's protocol ignores it: its ticket ends with its real result", async () => {
    const seed = startProcess("seed-peer", "bash", [join(repoRoot, "e2e/support/seed-peer.sh")], {
      REDIS_URL: world.env.REDIS_URL!,
      PREFIX: world.prefix,
      PEER_ID: "seed",
      TOKEN: "tok",
    })
    await seed.waitForLine(/^accepted$/)
    const ticket = await submit("sleep 2; echo real", "seed")
    await eventually("the seed peer got the job", async () =>
      (await stateOf(ticket)) === "delivered" ? true : undefined,
    )
    const asked = await runPicus(["cancel", ticket, "--no-wait", "--json"], world.env)
    expect(asked.code, asked.output).toBe(0)
    expect(JSON.parse(asked.stdout)).toMatchObject({ ticket, outcome: "requested" })
    const [row] = await eventually("the real result", async () => {
      const rows = await world.query<{ state: string; close_reason: string | null; output: string }>(
        sql.unsafe`select t.state, t.close_reason, r.output
          from tickets t join job_results r using (ticket) where t.ticket = ${ticket}`,
      )
      return rows.length > 0 ? rows : undefined
    })
    expect(row).toEqual({ state: "succeeded", close_reason: null, output: "real\n" })
    await seed.waitForLine(/^received .*"msg":"cancel"/)
    expect(seed.child.exitCode, seed.output()).toBeNull()
  })
})
