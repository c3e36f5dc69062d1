import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { adminUrl, withDatabase } from "../packages/server/test/support/database.ts"
import { makeWorld, type World } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import { killAll, runPicus } from "./support/processes.ts"

// A dependency that is not there is named with what to set, and the command exits 1: it neither
// hangs nor retries for long (the time it takes is not asserted).

let world: World
beforeEach(async () => {
  world = await makeWorld()
})
afterEach(async () => {
  await killAll()
  await world.close()
})

describe("an unreachable Redis or PostgreSQL is named with what to set", () => {
  it("Redis: deadletters, token create and the server exit 1 naming host, port and the fix", async () => {
    const port = await freePort()
    const redis = `cannot reach Redis at 127.0.0.1:${port} (connection refused); set REDIS_URL or --redis-url`
    const env = { ...world.env, REDIS_URL: `redis://127.0.0.1:${port}` }
    const runs = await Promise.all([
      runPicus(["deadletters"], env),
      runPicus(["token", "create"], env),
      runPicus(["server"], env),
    ])
    for (const run of runs) {
      expect(run.code, run.output).toBe(1)
      expect(run.output).toContain(`error: ${redis}`)
      expect(run.output).not.toMatch(/max retries per request/i)
    }
  })

  it("PostgreSQL: a closed port, an unknown user and a missing database are each named", async () => {
    const port = await freePort()
    const closed = { ...world.env, DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/picus` }
    const stranger = {
      ...world.env,
      DATABASE_URL: withDatabase(adminUrl(), world.db.name).replace("postgres@", "nobody_here@"),
    }
    const missing = { ...world.env, DATABASE_URL: withDatabase(adminUrl(), `${world.db.name}_absent`) }
    const [migrate, list, server, refused, absent] = await Promise.all([
      runPicus(["migrate"], closed),
      runPicus(["token", "list"], closed),
      runPicus(["server"], closed),
      runPicus(["migrate"], stranger),
      runPicus(["sessions"], missing),
    ])
    for (const run of [migrate, list, server]) {
      expect(run.code, run.output).toBe(1)
      expect(run.output).toContain(
        `error: cannot reach PostgreSQL at 127.0.0.1:${port}, database picus (connection refused); set DATABASE_URL or --database-url`,
      )
    }
    expect(refused.code, refused.output).toBe(1)
    expect(refused.output).toContain(
      `error: PostgreSQL at 127.0.0.1:5432 refused user nobody_here for database ${world.db.name} (role "nobody_here" does not exist); set DATABASE_URL or --database-url`,
    )
    expect(absent.code, absent.output).toBe(1)
    expect(absent.output).toContain(`database "${world.db.name}_absent" does not exist on 127.0.0.1:5432`)
  })
})
