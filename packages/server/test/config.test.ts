import { describe, expect, it } from "vitest"
import { ConfigError, DEFAULT_DATABASE_URL, resolveServerConfig } from "../src/config.ts"

describe("server configuration", () => {
  it("takes a flag over its environment variable, and the environment over the default", () => {
    const config = resolveServerConfig(
      { heartbeatMs: "200", redisPrefix: "flag" },
      { PICUS_HEARTBEAT_MS: "900", PICUS_REDIS_PREFIX: "env", PICUS_LEASE_MS: "4000" },
    )
    expect(config.heartbeatMs).toBe(200)
    expect(config.graceMs).toBe(600) // three heartbeats
    expect(config.redisPrefix).toBe("flag")
    expect(config.leaseMs).toBe(4000)
    expect(config.databaseUrl).toBe(DEFAULT_DATABASE_URL)
  })

  it("names the flag, the variable and the value that is wrong", () => {
    expect(() => resolveServerConfig({}, { PICUS_LEASE_MS: "soon" })).toThrow(
      new ConfigError('--lease-ms (or PICUS_LEASE_MS) must be a positive whole number, got "soon"'),
    )
    expect(() => resolveServerConfig({ drainMs: "-1" }, {})).toThrow(/--drain-ms .* got "-1"/)
  })

  it("keeps secrets redacted and never repeats them in an error", () => {
    const config = resolveServerConfig({}, { PICUS_TOKENS: "tok-1,tok-2" })
    expect(String(config.environmentTokens)).not.toContain("tok-1")
    expect(() => resolveServerConfig({}, { PICUS_SESSION_KEY: "too-short-secret" })).toThrow(
      /at least 32 characters/,
    )
    try {
      resolveServerConfig({}, { PICUS_SESSION_KEY: "too-short-secret" })
    } catch (error) {
      expect(String(error)).not.toContain("too-short-secret")
    }
    expect(resolveServerConfig({}, { PICUS_SESSION_KEY: "x".repeat(32) }).sessionKey?.length).toBe(32)
  })

  it("runs with Redis users unless PICUS_REDIS_USERS=off; reads the Redis TLS files' names", () => {
    expect(resolveServerConfig({}, {}).redisUsers).toBe(true)
    expect(resolveServerConfig({}, { PICUS_REDIS_USERS: "off" }).redisUsers).toBe(false)
    expect(resolveServerConfig({ redisUsers: "on" }, { PICUS_REDIS_USERS: "off" }).redisUsers).toBe(true)
    expect(() => resolveServerConfig({}, { PICUS_REDIS_USERS: "maybe" })).toThrow(
      new ConfigError('--redis-users (or PICUS_REDIS_USERS) must be on or off, got "maybe"'),
    )
    expect(resolveServerConfig({}, {}).redisTls).toBeUndefined()
    expect(resolveServerConfig({}, { PICUS_REDIS_CA: "/etc/ca.pem" }).redisTls).toEqual({
      caFile: "/etc/ca.pem",
    })
  })

  it("refuses a Redis prefix with spaces: user names and ACL rules are made of it", () => {
    expect(() => resolveServerConfig({}, { PICUS_REDIS_PREFIX: "my picus" })).toThrow(/without spaces/)
  })
})
