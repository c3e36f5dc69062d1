import { randomInt } from "node:crypto"
import { Agent } from "node:http"
import { join } from "node:path"
import { createPool, type QuerySqlToken, sql } from "slonik"
import { afterEach, describe, expect, it } from "vitest"
import { openEvents } from "../packages/cli/src/api/client.ts"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import { type PrivatePostgres, startPrivatePostgres } from "./support/postgres.ts"
import {
  eventually,
  killAll,
  runPicus,
  sleep,
  sleepsWith,
  startPicus,
  startPnpm,
  viaApiOf,
} from "./support/processes.ts"
import { type PrivateRedis, startPrivateRedis } from "./support/redis.ts"

// Faults the seed's system must ride out: Redis going away under a server and a peer.

const here = detectOs()
/** What the test started, stopped after it whatever happened. */
const cleanup: { redis?: PrivateRedis | undefined; world?: World | undefined } = {}
afterEach(async () => {
  await killAll()
  await cleanup.redis?.stop()
  await cleanup.world?.close()
  cleanup.redis = undefined
  cleanup.world = undefined
})

/** A private Redis, a server and peer p1 logged in; by default the catalog's one job is a slow one. */
const start = async (
  persistent: boolean,
  options: {
    readonly jobs?: Parameters<typeof writeCatalog>[1]
    readonly serverEnv?: Record<string, string>
  } = {},
) => {
  const redis = await startPrivateRedis({ persistent })
  cleanup.redis = redis
  const world = await makeWorld({
    REDIS_URL: redis.url,
    PICUS_HEARTBEAT_MS: "500",
    PICUS_GRACE_MS: "20000",
    PICUS_TOKENS: "tok",
  })
  cleanup.world = world
  const catalog = writeCatalog(
    world.dir,
    options.jobs ?? [
      { id: "slow", name: "Slow", os: here.os, distro: here.distro, command: "sleep 3; echo after-outage" },
    ],
  )
  const server = startPnpm("server", ["--filter", "server", "start"], {
    ...world.env,
    ...options.serverEnv,
    PICUS_CATALOG: catalog,
  })
  await server.waitForLine(/serving/)
  const peerEnv = { ...world.env, PICUS_TOKEN: "tok" }
  const peer = startPnpm(
    "peer",
    ["--filter", "peer", "start", "--peer-id", "p1", "--state-dir", join(world.dir, "p1")],
    peerEnv,
  )
  await peer.waitForLine(/registered as p1/)
  return { server, peer, peerEnv, redis, world }
}

describe("Redis restarts", () => {
  it("with persistence: a result finished during the outage is delivered and recorded once it is back", async () => {
    const { server, peer, redis, world } = await start(true)
    await sleep(500) // the slow job is running
    await redis.stop()
    await sleep(4_000) // it finishes while Redis is down
    await redis.start()
    const rows = await eventually("the result", async () => {
      const rows = await world.query<{ output: string }>(sql.unsafe`select output from job_results`)
      return rows.length > 0 ? rows : undefined
    })
    expect(rows.map((r) => r.output)).toEqual(["after-outage\n"])
    expect(peer.child.exitCode, peer.output()).toBeNull()
    server.signalGroup("SIGINT")
    expect(await server.exited, server.output()).toBe(0)
  })

  it("without persistence: server and peers keep running, and new peers register once it is back", async () => {
    const { server, peer, peerEnv, redis, world } = await start(false)
    await redis.stop()
    await sleep(2_000)
    await redis.start()
    const late = startPnpm(
      "late",
      ["--filter", "peer", "start", "--peer-id", "late", "--state-dir", join(world.dir, "late")],
      peerEnv,
    )
    await late.waitForLine(/registered as late/, 30_000)
    expect(peer.child.exitCode, peer.output()).toBeNull()
    expect(server.child.exitCode, server.output()).toBeNull()
    server.signalGroup("SIGINT")
    expect(await server.exited, server.output()).toBe(0)
  })
})

describe("Redis restarts under the HTTP API", () => {
  it("mid-run: the command waiting on the event stream ends with the run's outcome, and a stream open across the outage hears the next result", async () => {
    const port = await freePort()
    const { server, redis, world } = await start(true, {
      jobs: [],
      serverEnv: { PICUS_HTTP: `127.0.0.1:${port}` },
    })
    const { token, env: viaApi } = await viaApiOf(world.env, port)
    // Open across the outage, as a dashboard's would be: the feed is subscribed again under it.
    const events: Array<Record<string, unknown>> = []
    let ended = false
    const stream = openEvents(
      { url: new URL(`http://127.0.0.1:${port}`), token, agent: new Agent() },
      (event) => events.push(event),
    )
    void stream.ended.then(() => {
      ended = true
    })
    await stream.connected
    try {
      const marker = `3.${randomInt(1e9, 1e10 - 1)}`
      const waiting = startPicus(
        "run via the api",
        ["run", "--all", "--json", "--", `sleep ${marker}; echo through`],
        viaApi,
      )
      await eventually("the run's sleep running", async () => (sleepsWith(marker) === 1 ? true : undefined))
      await redis.stop()
      await sleep(2_000) // the sleep ends while Redis is down
      await redis.start()
      const code = await Promise.race([waiting.exited, sleep(30_000).then(() => "still waiting")])
      expect(code, waiting.output()).toBe(0)
      expect(waiting.output()).toContain("through")

      const again = await runPicus(["run", "--all", "--json", "--", "echo again"], viaApi)
      expect(again.code, again.output).toBe(0)
      const ticket = (JSON.parse(again.stdout.split("\n")[0]!) as { ticket: string }).ticket
      await eventually("the next result on the stream opened before the outage", async () =>
        events.some((e) => e.event === "result" && e.ticket === ticket) ? true : undefined,
      )
      expect(ended).toBe(false)
    } finally {
      stream.close()
    }
    expect(server.child.exitCode, server.output()).toBeNull()
  })
})

describe("PostgreSQL unavailable", () => {
  let pg: PrivatePostgres | undefined
  afterEach(() => {
    try {
      pg?.stop()
    } catch {
      // Already stopped.
    }
  })

  it("for 8 seconds mid-run: the server keeps running and records what came in meanwhile, and nobody is declared lost", async () => {
    pg = await startPrivatePostgres()
    const redis = await startPrivateRedis({ persistent: false })
    cleanup.redis = redis
    const world = await makeWorld({
      REDIS_URL: redis.url,
      PICUS_HEARTBEAT_MS: "500",
      PICUS_GRACE_MS: "20000",
      PICUS_LEASE_MS: "3000",
      PICUS_TOKENS: "tok",
    })
    cleanup.world = world
    const catalog = writeCatalog(world.dir, [
      { id: "slow", name: "Slow", os: here.os, distro: here.distro, command: "sleep 2; echo during-outage" },
    ])
    const env = { ...world.env, DATABASE_URL: pg.url }
    const server = startPnpm("server", ["--filter", "server", "start"], { ...env, PICUS_CATALOG: catalog })
    await server.waitForLine(/serving/)
    const peer = startPnpm(
      "peer",
      ["--filter", "peer", "start", "--peer-id", "p1", "--state-dir", join(world.dir, "p1")],
      {
        ...env,
        PICUS_TOKEN: "tok",
      },
    )
    await peer.waitForLine(/registered as p1/)
    pg.stop()
    const stoppedAt = Date.now()
    await peer.waitForLine(/job .* "Slow": succeeded/) // its result arrives while PostgreSQL is away
    await sleep(8_000 - (Date.now() - stoppedAt))
    pg.start()
    const recoveredAt = Date.now()
    const query = async <T>(query: QuerySqlToken) => {
      const pool = await createPool(pg!.url, { maxPoolSize: 1 })
      try {
        return (await pool.any(query)) as ReadonlyArray<T>
      } finally {
        await pool.end()
      }
    }
    const rows = await eventually("the result written after the outage", async () => {
      const rows = await query<{ output: string }>(sql.unsafe`select output from job_results`)
      return rows.length > 0 ? rows : undefined
    })
    console.log(`PostgreSQL outage: result committed ${Date.now() - recoveredAt} ms after it came back`)
    expect(rows.map((r) => r.output)).toEqual(["during-outage\n"])
    expect(server.child.exitCode, server.output()).toBeNull()
    await sleep(4_000) // past a lease: the instance must not have declared itself or its peer lost
    const sessions = await query<{ logout_reason: string | null }>(
      sql.unsafe`select logout_reason from peer_sessions`,
    )
    expect(sessions.map((s) => s.logout_reason)).toEqual([null])
    server.signalGroup("SIGINT")
    expect(await server.exited, server.output()).toBe(0)
  })
})
