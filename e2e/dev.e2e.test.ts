import { spawn } from "node:child_process"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { freePort } from "./support/ports.ts"
import { killAll, repoRoot, runPicus } from "./support/processes.ts"

// `make dev` as a newcomer runs it: the whole system in one process on the embedded layers.

afterEach(killAll)

const embeddedEnv = (dataDir: string, extra: Record<string, string> = {}) => {
  const env: Record<string, string> = {
    PICUS_DATA_DIR: dataDir,
    PICUS_SHUTDOWN_REASON: "end of the demo",
    ...extra,
  }
  return env
}

/** `make dev` with DATABASE_URL and REDIS_URL removed, so it must use the embedded layers. */
const startMakeDev = (dataDir: string, extra: Record<string, string>) => {
  const env: NodeJS.ProcessEnv = { ...process.env, ...embeddedEnv(dataDir, extra), FORCE_COLOR: "0" }
  delete env.DATABASE_URL
  delete env.REDIS_URL
  const child = spawn("make", ["dev"], {
    cwd: repoRoot,
    detached: true,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  })
  return child
}

describe("make dev", () => {
  it("runs a server and two peers on the embedded layers, and Ctrl+C leaves the log in the embedded database", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "picus-dev-"))
    // Its HTTP side on a port of the test's own (8080 by default).
    const port = await freePort()
    const child = startMakeDev(dataDir, { PICUS_HTTP: `127.0.0.1:${port}` })
    let output = ""
    child.stdout.on("data", (d: Buffer) => {
      output += d.toString()
    })
    child.stderr.on("data", (d: Buffer) => {
      output += d.toString()
    })
    // "close", not "exit": wait until every process writing to the pipes (make's recipe) is done.
    const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
    const deadline = Date.now() + 60_000
    const resultsFrom = (peer: string) =>
      output.split("\n").filter((l) => l.includes(peer) && / result /.test(l)).length
    while (Date.now() < deadline && (resultsFrom("peer-1") === 0 || resultsFrom("peer-2") === 0)) {
      await new Promise((r) => setTimeout(r, 200))
    }
    expect(resultsFrom("peer-1"), output).toBeGreaterThan(0)
    expect(resultsFrom("peer-2"), output).toBeGreaterThan(0)
    expect(output).toMatch(/peer-intruder\s+rejected/)
    // The dashboard and the API, with the read token it printed.
    const printed = new RegExp(
      `Dashboard: http://127\\.0\\.0\\.1:${port}/ +\\(operator token, read: (\\S+)\\)`,
    ).exec(output)
    expect(printed, output).not.toBeNull()
    const api = await fetch(`http://127.0.0.1:${port}/api/peers`, {
      headers: { authorization: `Bearer ${printed![1]}` },
    })
    expect(api.status).toBe(200)
    const { peers } = (await api.json()) as { peers: Array<{ peer_id: string }> }
    expect(peers.map((p) => p.peer_id).sort()).toEqual(expect.arrayContaining(["peer-1", "peer-2"]))
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(200)
    // The command line from another terminal, as printed: a run across make dev's peers.
    const line = /Command line: PICUS_API_URL=(\S+) PICUS_API_TOKEN=(\S+) \.\/picus run/.exec(output)
    expect(line, output).not.toBeNull()
    const ran = await runPicus(["run", "--all", "--json", "--", "echo from the command line"], {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "",
      PICUS_API_URL: line![1]!,
      PICUS_API_TOKEN: line![2]!,
    })
    expect(ran.code, ran.output).toBe(0)
    const tickets = ran.stdout
      .split("\n")
      .map((l) => JSON.parse(l) as { peer_id?: string; output?: string })
      .filter((t) => t.peer_id !== undefined)
    expect(tickets.map((t) => t.peer_id).sort()).toEqual(["peer-1", "peer-2"])
    expect(tickets.every((t) => t.output === "from the command line")).toBe(true)

    process.kill(-child.pid!, "SIGINT")
    const code = await exited
    // GNU make itself always dies of a SIGINT it receives (after waiting for its recipe), so its
    // own status is the signal's; the system under it must have stopped cleanly, exiting 0.
    expect(code === 0 || code === null, output).toBe(true)
    expect(output).not.toMatch(/ELIFECYCLE|error:/)
    expect(output).toMatch(/shutdown\s+end of the demo/)
    expect(output).toMatch(/Summary/)
    expect(output).toMatch(/peer-1\s+[\d.]+s\s+server_shutdown/)

    const read = await runPicus(["sessions", "--embedded", "--json"], embeddedEnv(dataDir))
    expect(read.code, read.output).toBe(0)
    const sessions = JSON.parse(read.stdout) as Array<{
      peer_id: string
      logout_reason: string | null
      duration_s: number
    }>
    expect(sessions.map((s) => [s.peer_id, s.logout_reason]).sort()).toEqual([
      ["peer-1", "server_shutdown"],
      ["peer-2", "server_shutdown"],
    ])
    expect(sessions.every((s) => s.duration_s >= 0)).toBe(true)
  })
})
