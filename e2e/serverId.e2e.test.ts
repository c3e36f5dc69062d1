import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World } from "./support/env.ts"
import { killAll, repoRoot, startNode } from "./support/processes.ts"

// Two server processes given the same id, against one Redis and one PostgreSQL.

let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_TOKENS: "tok", PICUS_LEASE_MS: "3000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

// Node itself, not pnpm, which turns every failing exit code into 1.
const startServer = (name: string, id: string) =>
  startNode(name, `${repoRoot}/packages/server/src/main.ts`, ["--server-id", id], world.env)

describe("a server id", () => {
  it("is refused (exit 2) to a second live server, and taken over at once after kill -9", async () => {
    const first = startServer("first", "twin")
    await first.waitForLine(/serving/)
    const second = startServer("second", "twin")
    const outcome = await Promise.race([
      second.exited,
      second.waitForLine(/serving/).then(
        () => "serving",
        () => "exited",
      ),
    ])
    expect(outcome === "exited" ? await second.exited : outcome, second.output()).toBe(2)
    expect(second.output()).toMatch(/another live server runs as twin/)
    expect(second.output()).not.toMatch(/serving/)
    expect(first.child.exitCode, "the first one serves on").toBeNull()

    // Killed and started again at once, with the same id: it starts, after one keep-alive.
    first.signalGroup("SIGKILL")
    await first.exited
    const again = startServer("again", "twin")
    await again.waitForLine(/serving/, 20_000)
    again.signalGroup("SIGINT")
    expect(await again.exited, again.output()).toBe(0)

    // Stopped cleanly: the id is free at once.
    const last = startServer("last", "twin")
    await last.waitForLine(/serving/, 20_000)
    expect(last.output()).not.toMatch(/checking for/)
    last.signalGroup("SIGINT")
    expect(await last.exited, last.output()).toBe(0)
  })
})
