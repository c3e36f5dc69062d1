import { randomInt } from "node:crypto"
import { writeFileSync } from "node:fs"
import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import {
  eventually,
  killAll,
  runPicus,
  sleep,
  sleepsWith,
  startPicus,
  viaApiOf,
} from "./support/processes.ts"

// Runs across the fleet with real processes: a server, peers of two distros (each reads its own
// os-release), and `./picus run` as an operator types it.

let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "2000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const osRelease = (distro: string) => {
  const path = join(world.dir, `os-release-${distro}`)
  writeFileSync(path, `ID=${distro}\nNAME="${distro}"\n`)
  return path
}

const createToken = async () => {
  const created = await runPicus(["token", "create", "--name", "runs", "--json"], world.env)
  expect(created.code, created.output).toBe(0)
  return (JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!) as { token: string }).token
}

/** The server and one peer per distro given, all logged in: the peers' ids, and the server. */
const fleet = async (distros: ReadonlyArray<string>, serverArgs: ReadonlyArray<string> = []) => {
  const token = await createToken()
  const server = startPicus("server", ["server", ...serverArgs], {
    ...world.env,
    PICUS_CATALOG: writeCatalog(world.dir, []),
  })
  await server.waitForLine(/serving/)
  const ids = distros.map((distro, i) => `${distro}-${i}`)
  for (const [i, distro] of distros.entries()) {
    startPicus(
      ids[i]!,
      ["peer", "--peer-id", ids[i]!, "--state-dir", join(world.dir, ids[i]!), "--label", `role=r${i % 2}`],
      { ...world.env, PICUS_TOKEN: token, PICUS_OS_RELEASE: osRelease(distro) },
    )
  }
  await eventually("every peer online", async () => {
    const peers = await runPicus(["peers", "--json"], world.env)
    const rows = JSON.parse(peers.stdout) as ReadonlyArray<{
      peerId: string
      online: boolean
      distro: string
    }>
    return rows.filter((r) => r.online).length === distros.length ? rows : undefined
  })
  return { ids, server }
}

interface TicketLine {
  readonly peer_id: string
  readonly state: string
  readonly exit_code: number | null
  readonly output: string | null
  readonly close_reason: string | null
}
const linesOf = (stdout: string) => stdout.split("\n").map((l) => JSON.parse(l) as Record<string, unknown>)

describe("picus run", () => {
  it("reaches exactly the peers of a distro, and its exit codes tell the outcome", async () => {
    const { ids } = await fleet(["alpine", "debian", "alpine"])
    const peers = await runPicus(["peers", "--json"], world.env)
    const rows = JSON.parse(peers.stdout) as ReadonlyArray<{ peerId: string; labels: Record<string, string> }>
    expect(Object.fromEntries(rows.map((r) => [r.peerId, r.labels.role]))).toEqual({
      [ids[0]!]: "r0",
      [ids[1]!]: "r1",
      [ids[2]!]: "r0",
    })

    const dry = await runPicus(
      ["run", "--distro", "alpine", "--dry-run", "--json", "--", "echo hi"],
      world.env,
    )
    expect(dry.code, dry.output).toBe(0)
    expect((JSON.parse(dry.stdout) as ReadonlyArray<{ peer: string }>).map((p) => p.peer)).toEqual([
      ids[0],
      ids[2],
    ])

    const ok = await runPicus(
      ["run", "--distro", "alpine", "--json", "--", "echo hi from $PICUS_PEER_ID"],
      world.env,
    )
    expect(ok.code, ok.output).toBe(0)
    const lines = linesOf(ok.stdout)
    const tickets = lines.filter((l) => "ticket" in l) as unknown as ReadonlyArray<TicketLine>
    expect(tickets.map((t) => t.peer_id).sort()).toEqual([ids[0], ids[2]])
    expect(tickets.every((t) => t.state === "succeeded" && t.exit_code === 0)).toBe(true)
    expect(lines.at(-1)).toMatchObject({ summary: { total: 2, succeeded: 2, failed: 0 } })

    const failing = await runPicus(["run", "--label", "role=r1", "--", "exit 4"], world.env)
    expect(failing.code, failing.output).toBe(1)
    expect(failing.stdout).toContain(ids[1])

    const nobody = await runPicus(["run", "--distro", "gentoo", "--", "echo never"], world.env)
    expect(nobody.code, nobody.output).toBe(3)
    expect(nobody.output).toContain("no peer matches")

    const usage = await runPicus(["run", "--", "echo no target"], world.env)
    expect(usage.code, usage.output).toBe(2)

    const recent = await runPicus(["runs", "--json"], world.env)
    expect((JSON.parse(recent.stdout) as ReadonlyArray<unknown>).length).toBe(2)
  })

  it("--max-errors 0 with --max-concurrency 1 stops the run after the first failure", async () => {
    const { ids } = await fleet(["debian", "debian", "debian"])
    const result = await runPicus(
      ["run", "--all", "--max-concurrency", "1", "--max-errors", "0", "--json", "--", "echo nope; exit 1"],
      world.env,
    )
    expect(result.code, result.output).toBe(1)
    const tickets = linesOf(result.stdout).filter(
      (l) => "ticket" in l,
    ) as unknown as ReadonlyArray<TicketLine>
    expect(tickets.length).toBe(3)
    const byState = tickets.map((t) => [t.state, t.close_reason])
    expect(byState.filter(([s]) => s === "failed")).toEqual([["failed", null]])
    expect(byState.filter(([s]) => s === "cancelled")).toEqual([
      ["cancelled", "max errors exceeded (1 > 0)"],
      ["cancelled", "max errors exceeded (1 > 0)"],
    ])
    expect(ids.length).toBe(3)
  })

  it("offline peers' tickets end undeliverable at the run's deadline: exit 3; --no-wait returns the run id", async () => {
    await fleet(["debian"])
    const queued = await runPicus(["run", "--all", "--no-wait", "--", "true"], world.env)
    expect(queued.code, queued.output).toBe(0)
    expect(queued.stdout).toMatch(/^r\d+$/)
    const shown = await eventually("the run to end", async () => {
      const show = await runPicus(["run", "show", queued.stdout, "--json"], world.env)
      const body = JSON.parse(show.stdout) as { succeeded: number }
      return body.succeeded === 1 ? body : undefined
    })
    expect(shown).toMatchObject({ total: 1, succeeded: 1 })
    await killAll()
    // The server and peer are gone: start only the server, so the peer stays offline.
    const server = startPicus("server-2", ["server"], {
      ...world.env,
      PICUS_CATALOG: writeCatalog(world.dir, []),
    })
    await server.waitForLine(/serving/)
    const late = await runPicus(["run", "--all", "--timeout", "1s", "--json", "--", "true"], world.env)
    expect(late.code, late.output).toBe(3)
    expect(linesOf(late.stdout)[0]).toMatchObject({ state: "undeliverable" })
  })

  it("goes through a server's HTTP API with PICUS_API_URL: same outcomes and exit codes, no PostgreSQL or Redis settings", async () => {
    const port = await freePort()
    const { ids } = await fleet(["alpine", "debian"], ["--http", `127.0.0.1:${port}`])
    // Nothing but the API: PostgreSQL and Redis settings that lead nowhere.
    const { env: viaApi } = await viaApiOf(world.env, port)

    const ok = await runPicus(["run", "--all", "--json", "--", "echo hi via the api"], viaApi)
    expect(ok.code, ok.output).toBe(0)
    const lines = linesOf(ok.stdout)
    const tickets = lines.filter((l) => "ticket" in l) as unknown as ReadonlyArray<TicketLine>
    expect(tickets.map((t) => t.peer_id).sort()).toEqual([...ids].sort())
    expect(tickets.map((t) => t.output)).toEqual(["hi via the api", "hi via the api"])
    expect(lines.at(-1)).toMatchObject({ summary: { total: 2, succeeded: 2, failed: 0 } })
    // The API records who started it.
    const runId = (lines.at(-1) as { summary: { run_id: string } }).summary.run_id
    const recorded = await runPicus(["run", "show", runId, "--json"], world.env)
    expect(recorded.code, recorded.output).toBe(0)
    expect(JSON.parse(recorded.stdout)).toMatchObject({ run: { createdBy: "api:ops" } })

    const table = await runPicus(["run", "--distro", "debian", "--", "echo table; exit 4"], viaApi)
    expect(table.code, table.output).toBe(1)
    expect(table.stdout).toMatch(new RegExp(`${ids[1]}\\s+failed\\s+4\\s+`))
    expect(table.stdout).toContain("1/1 done, 0 succeeded, 1 failed")

    // --follow: the output as the peers relay it, a line at a time prefixed with the peer.
    const followed = await runPicus(
      ["run", "--distro", "alpine", "--follow", "--", "echo first; sleep 0.5; echo second"],
      viaApi,
    )
    expect(followed.code, followed.output).toBe(0)
    expect(followed.stdout).toContain(`${ids[0]}: first\n${ids[0]}: second`)

    const dry = await runPicus(["run", "--distro", "alpine", "--dry-run", "--json", "--", "true"], viaApi)
    expect(dry.code, dry.output).toBe(0)
    expect((JSON.parse(dry.stdout) as ReadonlyArray<{ peer: string }>).map((p) => p.peer)).toEqual([ids[0]])

    // picus peers through the API: what the direct way lists, with nothing but the API.
    const listed = await runPicus(["peers", "--json"], viaApi)
    expect(listed.code, listed.output).toBe(0)
    const fromDatabase = await runPicus(["peers", "--json"], world.env)
    const essentials = (stdout: string) =>
      (JSON.parse(stdout) as ReadonlyArray<Record<string, unknown>>).map(({ lastSeenAt: _, ...rest }) => rest)
    expect(essentials(listed.stdout)).toEqual(essentials(fromDatabase.stdout))
    expect(essentials(listed.stdout).filter((p) => p.online === true)).toHaveLength(2)
    const peersTable = await runPicus(["peers"], viaApi)
    expect(peersTable.code, peersTable.output).toBe(0)
    expect(peersTable.stdout).toMatch(new RegExp(`${ids[1]}\\s+linux\\s+debian\\s+role=r1\\s+true`))
    const addViaApi = await runPicus(["peers", "--json", "add", "web-9"], viaApi)
    expect(addViaApi.code, addViaApi.output).toBe(2)
    expect(addViaApi.output).toContain("is not done through the API")

    const nobody = await runPicus(["run", "--distro", "gentoo", "--", "true"], viaApi)
    expect(nobody.code, nobody.output).toBe(3)
    expect(nobody.output).toContain("no peer matches")

    const noToken = await runPicus(["run", "--all", "--", "true"], { ...viaApi, PICUS_API_TOKEN: "" })
    expect(noToken.code, noToken.output).toBe(2)
    expect(noToken.output).toContain("set PICUS_API_TOKEN")
    const wrongToken = await runPicus(["run", "--all", "--", "true"], {
      ...viaApi,
      PICUS_API_TOKEN: "picusop_nope",
    })
    expect(wrongToken.code, wrongToken.output).toBe(1)
    expect(wrongToken.output).toContain("refused the token")
    const nowhere = await runPicus(["run", "--all", "--", "true"], {
      ...viaApi,
      PICUS_API_URL: "http://127.0.0.1:1",
    })
    expect(nowhere.code, nowhere.output).toBe(1)
    expect(nowhere.output).toContain("cannot reach the API at http://127.0.0.1:1")
    // picus peers the same: the token refused, the API out of reach.
    const peersRefused = await runPicus(["peers"], { ...viaApi, PICUS_API_TOKEN: "picusop_nope" })
    expect(peersRefused.code, peersRefused.output).toBe(1)
    expect(peersRefused.output).toContain("refused the token")
    const peersNowhere = await runPicus(["peers"], { ...viaApi, PICUS_API_URL: "http://127.0.0.1:1" })
    expect(peersNowhere.code, peersNowhere.output).toBe(1)
    expect(peersNowhere.output).toContain("cannot reach the API at http://127.0.0.1:1")

    // picus cancel through the API: the running job is killed, the API's token named as who.
    const marker = `30.${randomInt(1e9, 1e10 - 1)}`
    const started = await runPicus(["run", "--peer", ids[1]!, "--no-wait", "--", `sleep ${marker}`], viaApi)
    expect(started.code, started.output).toBe(0)
    const runId2 = started.stdout.trim()
    await eventually("the run's sleep running", async () => (sleepsWith(marker) === 1 ? true : undefined))
    const byHand = await runPicus(["cancel", runId2, "--by", "bob"], viaApi)
    expect(byHand.code, byHand.output).toBe(2)
    expect(byHand.output).toContain("--by is not taken through the API")
    const cancelled = await runPicus(["cancel", runId2, "--reason", "rollback"], viaApi)
    expect(cancelled.code, cancelled.output).toBe(0)
    expect(cancelled.stdout).toContain(`(${ids[1]}): cancelled`)
    await eventually("no sleep left behind", async () => (sleepsWith(marker) === 0 ? true : undefined), 5_000)
    const shown = await runPicus(["run", "show", runId2, "--json"], world.env)
    expect(JSON.parse(shown.stdout).tickets).toMatchObject([
      { state: "cancelled", close_reason: "cancelled by api:ops: rollback" },
    ])
    const unknownRun = await runPicus(["cancel", "r999999999", "999999999"], viaApi)
    expect(unknownRun.code, unknownRun.output).toBe(1)
    expect(unknownRun.stdout).toContain("run r999999999: no such run")
    expect(unknownRun.stdout).toContain("ticket 999999999: no such ticket")

    // Without the API, the same settings fail: the command above did not use them.
    const direct = await runPicus(["run", "--all", "--", "true"], { ...viaApi, PICUS_API_URL: "" })
    expect(direct.code).not.toBe(0)
    expect(direct.output).toMatch(/cannot reach|PostgreSQL|Redis/)
  })

  it("through the API, a server killed mid-run: the command exits 1 naming the API it lost", async () => {
    const port = await freePort()
    const { ids, server } = await fleet(["debian"], ["--http", `127.0.0.1:${port}`])
    const { env: viaApi } = await viaApiOf(world.env, port)
    const marker = `30.${randomInt(1e9, 1e10 - 1)}`
    const waiting = startPicus("run via the api", ["run", "--peer", ids[0]!, "--", `sleep ${marker}`], viaApi)
    await eventually("the run's sleep running", async () => (sleepsWith(marker) === 1 ? true : undefined))
    server.signalGroup("SIGKILL")
    // Its event stream ends with the server; the next read of the run finds nothing listening.
    const code = await Promise.race([waiting.exited, sleep(20_000).then(() => "still waiting")])
    expect(code, waiting.output()).toBe(1)
    expect(waiting.output()).toContain(`cannot reach the API at http://127.0.0.1:${port}`)
  })
})
