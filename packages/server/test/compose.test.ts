import { readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import { parse } from "yaml"
import { DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL } from "../src/config.ts"

// Docker does not run on the test machines: check the file's settings against the code's defaults.
const compose = parse(readFileSync(new URL("../../../compose.yaml", import.meta.url), "utf8")) as {
  services: Record<
    string,
    {
      image: string
      environment?: Record<string, string>
      ports: Array<string>
      command?: Array<string>
      healthcheck?: { test: Array<string> }
    }
  >
}

describe("compose.yaml", () => {
  it("serves PostgreSQL where the server looks by default, with a health check", () => {
    const pg = compose.services.postgres!
    const url = new URL(DEFAULT_DATABASE_URL)
    expect(pg.ports).toContain(`127.0.0.1:${url.port}:5432`)
    expect(pg.environment?.POSTGRES_USER).toBe(url.username)
    expect(pg.environment?.POSTGRES_DB).toBe(url.pathname.slice(1))
    expect(pg.healthcheck?.test).toContain("pg_isready")
  })

  it("serves Redis where server and peers look by default, with AOF, noeviction and a health check", () => {
    const redis = compose.services.redis!
    const url = new URL(DEFAULT_REDIS_URL)
    expect(redis.ports).toContain(`127.0.0.1:${url.port}:6379`)
    const command = redis.command!.join(" ")
    expect(command).toContain("--appendonly yes")
    expect(command).toContain("--maxmemory-policy noeviction")
    expect(redis.healthcheck?.test).toContain("ping")
  })
})
