import { chmodSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Trust } from "@picus/core"
import { Redacted } from "effect"
import { describe, expect, it } from "vitest"
import { endorsementText, keyFileOrNew, writeNewKeyFile } from "../src/clusterKey.ts"
import { ConfigError, DEFAULT_DATABASE_URL, requireClusterKey, resolveServerConfig } from "../src/config.ts"

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
    const seed = Trust.newPrivateKey()
    const keyed = resolveServerConfig({}, { PICUS_CLUSTER_KEY: seed })
    expect(JSON.stringify(keyed)).not.toContain(seed)
    expect(String(keyed.clusterKey?.seed)).not.toContain(seed)
    try {
      resolveServerConfig({}, { PICUS_CLUSTER_KEY: `${seed.slice(0, 20)}!` })
      expect.fail("a damaged key was taken")
    } catch (error) {
      expect(String(error)).toMatch(/PICUS_CLUSTER_KEY must hold a base64url 32-byte key/)
      expect(String(error)).not.toContain(seed.slice(0, 20))
    }
  })
})

describe("the cluster key", () => {
  const dir = () => mkdtempSync(join(tmpdir(), "picus-key-"))

  it("comes from PICUS_CLUSTER_KEY or a file; serving without one names the fix", () => {
    const seed = Trust.newPrivateKey()
    const key = requireClusterKey(resolveServerConfig({}, { PICUS_CLUSTER_KEY: seed }))
    expect(key.publicKey).toBe(Trust.signingKeyOf(seed)?.publicKey)
    expect(key.fingerprint).toBe(Trust.fingerprintOf(key.publicKey))
    const path = join(dir(), "cluster.key")
    writeFileSync(path, `${seed}\n`, { mode: 0o600 })
    expect(requireClusterKey(resolveServerConfig({}, { PICUS_CLUSTER_KEY_FILE: path })).publicKey).toBe(
      key.publicKey,
    )
    expect(requireClusterKey(resolveServerConfig({ clusterKeyFile: path }, {})).publicKey).toBe(key.publicKey)
    expect(() => requireClusterKey(resolveServerConfig({}, {}))).toThrow(
      /no cluster key: set PICUS_CLUSTER_KEY_FILE .*picus cluster-key new/,
    )
    expect(() => resolveServerConfig({}, { PICUS_CLUSTER_KEY: seed, PICUS_CLUSTER_KEY_FILE: path })).toThrow(
      /not both/,
    )
    // The key is not read by commands that do not serve, but a retired setting is not ignored.
    expect(resolveServerConfig({}, {}).clusterKey).toBeUndefined()
    expect(() => resolveServerConfig({}, { PICUS_SESSION_KEY: "x".repeat(40) })).toThrow(
      /PICUS_SESSION_KEY is no longer read/,
    )
  })

  it("refuses a key file that group or others may read", () => {
    const path = join(dir(), "cluster.key")
    writeFileSync(path, Trust.newPrivateKey(), { mode: 0o600 })
    chmodSync(path, 0o640)
    expect(() => resolveServerConfig({}, { PICUS_CLUSTER_KEY_FILE: path })).toThrow(
      new ConfigError(
        `PICUS_CLUSTER_KEY_FILE ${path} is open to group or others (mode 0640): run \`chmod 600 ${path}\``,
      ),
    )
    chmodSync(path, 0o600)
    expect(resolveServerConfig({}, { PICUS_CLUSTER_KEY_FILE: path }).clusterKey).toBeDefined()
    expect(() => resolveServerConfig({}, { PICUS_CLUSTER_KEY_FILE: join(dir(), "none") })).toThrow(
      /PICUS_CLUSTER_KEY_FILE .*none cannot be read/,
    )
  })

  it("after a rotation, endorses the new key with the previous one", () => {
    const [seed, old] = [Trust.newPrivateKey(), Trust.newPrivateKey()]
    const key = requireClusterKey(
      resolveServerConfig({}, { PICUS_CLUSTER_KEY: seed, PICUS_CLUSTER_KEY_PREVIOUS: old }),
    )
    const oldPublic = Trust.signingKeyOf(old)!.publicKey
    expect(key.previous?.publicKey).toBe(oldPublic)
    expect(Trust.verifyBytes(endorsementText(key.publicKey), key.previous!.endorsement, oldPublic)).toBe(true)
    expect(Trust.verifyBytes(endorsementText(oldPublic), key.previous!.endorsement, oldPublic)).toBe(false)
    expect(() => resolveServerConfig({}, { PICUS_CLUSTER_KEY_PREVIOUS: old })).toThrow(
      /without a current key/,
    )
  })

  it("cluster-key new writes a file of mode 0600 and never over an existing one", () => {
    const path = join(dir(), "cluster.key")
    const key = writeNewKeyFile(path)
    expect(requireClusterKey(resolveServerConfig({}, { PICUS_CLUSTER_KEY_FILE: path })).publicKey).toBe(
      key.publicKey,
    )
    expect(() => writeNewKeyFile(path)).toThrow(/exists: not overwritten/)
    // The dev setup keeps its key across restarts.
    expect(keyFileOrNew(path).publicKey).toBe(key.publicKey)
    const fresh = join(dir(), "dev.key")
    expect(keyFileOrNew(fresh).publicKey).toBe(keyFileOrNew(fresh).publicKey)
    expect(Redacted.value(keyFileOrNew(fresh).seed)).toMatch(/^[A-Za-z0-9_-]{43}$/)
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
