import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import { eventually, killAll, runPicus, startPicus } from "./support/processes.ts"

// The HTTP side of a real server with a real peer: probes and the Prometheus text.

const here = detectOs()
let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "1000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const get = async (port: number, path: string) => {
  const response = await fetch(`http://127.0.0.1:${port}${path}`)
  return { status: response.status, body: await response.text() }
}

/** The value of one sample line of the Prometheus text, e.g. `picus_sessions_open`. */
const sample = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe("--http", () => {
  it("answers /healthz, /readyz and /metrics with the counts of what happened", async () => {
    const port = await freePort()
    const catalog = writeCatalog(world.dir, [
      { id: "hello", name: "Hello", os: here.os, distro: here.distro, command: "echo hello" },
    ])
    const created = await runPicus(["token", "create", "--name", "http", "--json"], world.env)
    expect(created.code, created.output).toBe(0)
    const { token } = JSON.parse(created.stdout) as { token: string }
    const server = startPicus("server", ["server", "--http", `127.0.0.1:${port}`], {
      ...world.env,
      PICUS_CATALOG: catalog,
    })
    await server.waitForLine(/serving/)
    expect(await get(port, "/healthz")).toEqual({ status: 200, body: "ok\n" })
    await eventually("ready", async () => ((await get(port, "/readyz")).status === 200 ? true : undefined))

    const peer = startPicus("peer", ["peer", "--peer-id", "web-1", "--state-dir", join(world.dir, "web-1")], {
      ...world.env,
      PICUS_TOKEN: token,
    })
    await peer.waitForLine(/registered as web-1/)
    const metrics = await eventually("the result in the metrics", async () => {
      const { body } = await get(port, "/metrics")
      return (sample(body, "picus_results_recorded_total") ?? 0) >= 1 ? body : undefined
    })
    expect(sample(metrics, 'picus_registrations_total{outcome="accepted",reason=""}')).toBe(1)
    expect(sample(metrics, "picus_sessions_open")).toBe(1)
    expect(sample(metrics, 'picus_tickets_total{state="succeeded"}')).toBe(1)
    expect(sample(metrics, "picus_ticket_result_seconds_count")).toBe(1)
    expect(sample(metrics, "picus_ticket_sent_seconds_count")).toBe(1)
    expect(sample(metrics, "picus_pg_statement_seconds_count")).toBeGreaterThan(0)
    expect(sample(metrics, "picus_dead_letters")).toBe(0)
    expect(await get(port, "/nothing-here")).toMatchObject({ status: 404 })

    peer.signalGroup("SIGINT")
    await peer.exited
    const after = await eventually("the logout in the metrics", async () => {
      const { body } = await get(port, "/metrics")
      return sample(body, 'picus_logouts_total{reason="peer_shutdown"}') === 1 ? body : undefined
    })
    expect(sample(after, "picus_sessions_open")).toBe(0)
    server.signalGroup("SIGINT")
    expect(await server.exited).toBe(0)
  })
})
