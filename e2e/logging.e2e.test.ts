import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World } from "./support/env.ts"
import { killAll, type Running, runPicus, startPicus } from "./support/processes.ts"

// --log-format json: the server and the peer print nothing but pino-style JSON lines, one per event.

let world: World
beforeEach(async () => {
  world = await makeWorld()
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const PINO_LEVELS = [20, 30, 40, 50]

/** Every line a process printed, each parsed; a line that is not a JSON log line fails the test. */
const jsonLines = (running: Running) =>
  running.lines
    .filter((line) => line !== "")
    .map((line) => {
      let parsed: Record<string, unknown>
      try {
        parsed = JSON.parse(line) as Record<string, unknown>
      } catch {
        throw new Error(`${running.name} printed a line that is not JSON: ${line}`)
      }
      expect(PINO_LEVELS, line).toContain(parsed.level)
      expect(typeof parsed.time, line).toBe("number")
      expect(Math.abs((parsed.time as number) - Date.now()), line).toBeLessThan(600_000)
      expect(typeof parsed.pid, line).toBe("number")
      expect(typeof parsed.hostname, line).toBe("string")
      expect(typeof parsed.msg, line).toBe("string")
      return parsed
    })

describe("--log-format json", () => {
  it("the server and a peer log only JSON lines (level, time, pid, hostname, msg)", async () => {
    const created = await runPicus(["token", "create", "--json"], world.env)
    expect(created.code, created.output).toBe(0)
    const enrollment = (JSON.parse(created.stdout) as { enrollment: string }).enrollment
    const server = startPicus("server", ["server", "--log-format", "json", "--log-level", "debug"], world.env)
    await server.waitForLine(/"msg":"server .* serving/)
    // The enrollment string carries the cluster key: the peer gets nothing else of the world's keys.
    const { PICUS_CLUSTER_KEY: _k, PICUS_CLUSTER_PUBLIC_KEY: _p, ...shared } = world.env
    const peer = startPicus(
      "peer",
      ["peer", "--peer-id", "p-json", "--state-dir", join(world.dir, "p-json"), "--exit-on-shutdown"],
      { ...shared, PICUS_ENROLL: enrollment, PICUS_LOG_FORMAT: "json" },
    )
    await peer.waitForLine(/"msg":"registered as p-json/)
    server.signalGroup("SIGINT")
    expect(await server.exited).toBe(0)
    expect(await peer.exited).toBe(0)
    const serverLines = jsonLines(server)
    const peerLines = jsonLines(peer)
    expect(serverLines.some((l) => /serving/.test(String(l.msg)) && l.level === 30)).toBe(true)
    expect(peerLines.some((l) => /^peer p-json starting/.test(String(l.msg)))).toBe(true)
    expect(peerLines.some((l) => /server shutdown/.test(String(l.msg)))).toBe(true)
  })

  it("--log-level warn hides info lines; a bad level or format exits 2 naming the flag", async () => {
    const quiet = startPicus(
      "server",
      ["server", "--log-level", "warn", "--redis-url", "redis://127.0.0.1:1"],
      world.env,
    )
    expect(await quiet.exited).toBe(1)
    expect(quiet.output()).not.toMatch(/INFO/)
    expect(quiet.output()).toMatch(/cannot reach Redis at 127.0.0.1:1/)
    const [level, format] = await Promise.all([
      runPicus(["server", "--log-level", "loud"], world.env),
      runPicus(["peer"], { ...world.env, PICUS_LOG_FORMAT: "xml" }),
    ])
    expect(level.code).toBe(2)
    expect(level.output).toContain(
      '--log-level (or PICUS_LOG_LEVEL) must be debug, info, warn or error, got "loud"',
    )
    expect(format.code).toBe(2)
    expect(format.output).toContain('--log-format (or PICUS_LOG_FORMAT) must be text or json, got "xml"')
  })
})
