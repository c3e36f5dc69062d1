import { execFileSync } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { arch, tmpdir } from "node:os"
import { join } from "node:path"
import { sql } from "slonik"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { eventually, killAll, runPicus, startPicus, startProcess } from "./support/processes.ts"

// The packaged peer (`./picus package`): one executable made with Node's single executable
// applications, run as on a machine without Node, npm or the repository (an empty PATH, another
// folder, none of this process's environment), against a real server.

const hostArch = arch() === "arm64" ? "arm64" : "x64"
let out: string
beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), "picus-package-"))
  // Both architectures: arm64's node binary comes from the npm registry (it only builds here).
  const built = await runPicus(["package", "--out", out], {})
  expect(built.code, built.output).toBe(0)
}, 300_000)
afterAll(() => rmSync(out, { recursive: true, force: true }))

let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "2000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const createToken = async () => {
  const created = await runPicus(["token", "create", "--name", "packaged", "--json"], world.env)
  expect(created.code, created.output).toBe(0)
  return (JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!) as { token: string }).token
}

const startServer = async () => {
  const server = startPicus("server", ["server"], {
    ...world.env,
    PICUS_CATALOG: writeCatalog(world.dir, []),
  })
  await server.waitForLine(/serving/)
  return server
}

/** The env a machine without Node gives the peer: nothing on PATH, a home of its own. */
const bareEnv = (home: string, extra: Record<string, string>): Record<string, string> => ({
  PATH: "",
  HOME: home,
  REDIS_URL: world.env.REDIS_URL!,
  PICUS_REDIS_PREFIX: world.prefix,
  PICUS_CLUSTER_PUBLIC_KEY: world.clusterPublicKey,
  ...extra,
})

describe("picus package", () => {
  it("builds one ELF executable per architecture", () => {
    for (const [a, machine] of [
      ["x64", "x86-64"],
      ["arm64", "ARM aarch64"],
    ] as const) {
      const described = execFileSync("file", ["-b", join(out, `picus-peer-linux-${a}`)], { encoding: "utf8" })
      expect(described).toContain(machine)
      expect(described).toContain("executable")
    }
  })

  it("the executable runs with an empty PATH outside the repository: registers, runs a job, logs out on SIGTERM", async () => {
    const token = await createToken()
    await startServer()
    const home = join(world.dir, "machine")
    mkdirSync(home)
    const started = Date.now()
    const peer = startProcess(
      "packaged peer",
      join(out, `picus-peer-linux-${hostArch}`),
      ["--peer-id", "packaged-1"],
      bareEnv(home, { PICUS_TOKEN: token, PICUS_STATE_DIR: join(home, "state") }),
      { cwd: home },
    )
    await peer.waitForLine(/registered as packaged-1/)
    // A start that takes a second or more would show here, with the whole registration.
    expect(Date.now() - started).toBeLessThan(10_000)
    const ran = await runPicus(["run", "--all", "--json", "--", "echo hello from $HOME"], world.env)
    expect(ran.code, ran.output).toBe(0)
    const ticket = JSON.parse(ran.stdout.split("\n")[0]!) as {
      state: string
      output: string
      peer_id: string
    }
    expect(ticket).toMatchObject({ state: "succeeded", peer_id: "packaged-1" })
    expect(ticket.output).toContain(`hello from ${home}`)

    peer.signalGroup("SIGTERM")
    expect(await peer.exited).toBe(0)
    const logouts = await eventually("the logout", async () => {
      const rows = await world.query<{ reason: string }>(
        sql.unsafe`select reason from registration_log where event = 'logout' and peer_id = 'packaged-1'`,
      )
      return rows.length > 0 ? rows : undefined
    })
    expect(logouts.map((r) => r.reason)).toEqual(["peer_shutdown"])
  }, 60_000)
})
