import { chmodSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { sql } from "slonik"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { killAll, runPicus, runPnpm } from "./support/processes.ts"

// What a user types that the wire cannot carry is refused with exit code 2 before anything is
// written; a failure while running still exits 1.

let world: World
beforeEach(async () => {
  world = await makeWorld()
})
afterEach(async () => {
  await killAll()
  await world.close()
})

// `./picus` passes each command's own exit code on (2 for a usage mistake).
const picus = (...args: ReadonlyArray<string>) => runPicus(args, world.env)

const ticketCount = async () =>
  Number((await world.query<{ n: number }>(sql.unsafe`select count(*)::int as n from tickets`))[0]?.n)

describe("picus refuses what the wire cannot carry", () => {
  it("submit: an empty or oversized command, a bad name or timeout exits 2 and writes no ticket", async () => {
    expect((await picus("migrate")).code).toBe(0)
    await world.query(
      sql.unsafe`insert into peers (peer_id, os, distro) values ('peer-1', 'linux', 'debian')`,
    )
    const cases: ReadonlyArray<readonly [ReadonlyArray<string>, string]> = [
      [["peer-1", ""], "command: expected a non-empty string"],
      [["peer-1", "x".repeat(9 * 1024)], "command: expected at most 8192 UTF-8 bytes, got 9216"],
      [["peer-1", "true", "--name", "n".repeat(300)], "name: expected at most 256 code points, got 300"],
      [
        ["peer-1", "true", "--timeout-ms", "0"],
        "timeout_ms: expected an integer from 1 to 2147483647, got 0",
      ],
      [
        ["peer-1", "true", "--timeout-ms", "4294967296"],
        "timeout_ms: expected an integer from 1 to 2147483647",
      ],
    ]
    for (const [args, message] of cases) {
      const refused = await picus("submit", ...args)
      expect(refused.code, refused.output).toBe(2)
      expect(refused.output).toContain(`error: ${message}`)
      expect(await ticketCount()).toBe(0)
    }
    // The same peer takes a valid job: the refusals above were the validation, not the setup.
    const accepted = await picus("submit", "peer-1", "true")
    expect(accepted.code, accepted.output).toBe(0)
    expect(await ticketCount()).toBe(1)
    // A runtime failure (no such peer) still exits 1.
    const unknown = await picus("submit", "nobody", "true")
    expect(unknown.code).toBe(1)
    expect(unknown.output).toMatch(/no peer nobody has ever registered/)
  })

  it("start: a catalog the wire cannot carry stops the server with exit 2, naming file, job, field and limit", async () => {
    const path = writeCatalog(world.dir, [
      { id: "ok", name: "Ok", os: "linux", distro: "debian", command: "true" },
      { id: "big", name: "Big", os: "linux", distro: "debian", command: "x".repeat(9 * 1024) },
    ])
    const refused = await picus("server", "--catalog", path)
    expect(refused.code, refused.output).toBe(2)
    expect(refused.output).toContain(
      `error: catalog ${path}: job 1 (id "big"): command: expected at most 8192 UTF-8 bytes, got 9216`,
    )
    // Refused before it connected: not even the migrations ran.
    const tables = await world.query(sql.unsafe`select 1 from pg_tables where tablename = 'tickets'`)
    expect(tables).toHaveLength(0)
  })

  it("start: without a cluster key, or with one whose file others may read, exits 2 naming the fix", async () => {
    const { PICUS_CLUSTER_KEY: _key, ...withoutKey } = world.env
    const none = await runPnpm(["-C", "packages/server", "start"], withoutKey)
    expect(none.code, none.output).toBe(2)
    expect(none.output).toContain("error: no cluster key: set PICUS_CLUSTER_KEY_FILE")
    expect(none.output).toContain("picus cluster-key new --out <file>")

    const file = join(world.dir, "cluster.key")
    const made = await runPicus(["cluster-key", "new", "--out", file], withoutKey)
    expect(made.code, made.output).toBe(0)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    const shown = await runPicus(["cluster-key", "show"], {
      ...withoutKey,
      PICUS_CLUSTER_KEY_FILE: file,
    })
    expect(shown.code, shown.output).toBe(0)
    const fingerprint = /fingerprint: (sha256:\S+)/.exec(made.stdout)?.[1]
    expect(fingerprint).toBeDefined()
    expect(shown.stdout).toContain(`fingerprint: ${fingerprint}`)
    expect(shown.stdout).not.toContain(readFileSync(file, "utf8").trim())

    chmodSync(file, 0o644)
    const open = await runPnpm(["-C", "packages/server", "start"], {
      ...withoutKey,
      PICUS_CLUSTER_KEY_FILE: file,
    })
    expect(open.code, open.output).toBe(2)
    expect(open.output).toContain(`is open to group or others (mode 0644): run \`chmod 600 ${file}\``)
    const tables = await world.query(sql.unsafe`select 1 from pg_tables where tablename = 'tickets'`)
    expect(tables).toHaveLength(0)
  })
})
