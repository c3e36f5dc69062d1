import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { makeKeys, redisPasswordOf, Trust } from "@picus/core"
import { deleteKeysWithPrefix, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { Redis } from "ioredis"
import { afterEach, describe, expect, it } from "vitest"
import { freePort } from "../../../e2e/support/ports.ts"
import { eventually, killAll, sleep, startNode, startPnpm } from "../../../e2e/support/processes.ts"
import { startPrivateRedis } from "../../../e2e/support/redis.ts"

// Real peer processes, started as a user starts them, against the shared Redis (a key prefix of
// the test's own) with no server: what matters here is what they do before registering.

const peerScript = fileURLToPath(new URL("../src/main.ts", import.meta.url))
const prefixes: Array<string> = []
afterEach(async () => {
  await killAll()
  for (const prefix of prefixes.splice(0)) await deleteKeysWithPrefix(testRedisUrl(), prefix)
})

/** A cluster key to pin: these peers meet no server, so any key does. */
const clusterKey = Trust.signingKeyOf(Trust.newPrivateKey())!.publicKey

const peerEnv = (extra: Record<string, string> = {}) => {
  const prefix = testKeyPrefix()
  prefixes.push(prefix)
  return {
    PICUS_TOKEN: "tok",
    PICUS_CLUSTER_PUBLIC_KEY: clusterKey,
    REDIS_URL: testRedisUrl(),
    PICUS_REDIS_PREFIX: prefix,
    ...extra,
  }
}

const stateDirOf = async (line: Promise<string>) => /\(state in (.+)\)/.exec(await line)?.[1]

describe("peer processes on one host", () => {
  it("two peers started with the README's commands (default state folder) keep a state file each", async () => {
    const home = mkdtempSync(join(tmpdir(), "picus-home-"))
    const env = peerEnv({ HOME: home, XDG_STATE_HOME: join(home, ".local", "state") })
    const one = startPnpm("peer-1", ["--filter", "peer", "start", "--peer-id", "peer-1"], env)
    const two = startPnpm("peer-2", ["--filter", "peer", "start", "--peer-id", "peer-2"], env)
    const [dirOne, dirTwo] = await Promise.all([
      stateDirOf(one.waitForLine(/starting/)),
      stateDirOf(two.waitForLine(/starting/)),
    ])
    expect(dirOne).toBeDefined()
    expect(dirOne, "each peer id has a folder of its own").not.toBe(dirTwo)
    for (const [id, dir] of [
      ["peer-1", dirOne!],
      ["peer-2", dirTwo!],
    ] as const) {
      expect(dir.startsWith(join(home, ".local", "state", "picus"))).toBe(true)
      const file = join(dir, "peer.json")
      await eventually(`${file}`, async () => (existsSync(file) ? true : undefined), 10_000)
      expect(JSON.parse(readFileSync(file, "utf8")).peer_id).toBe(id)
    }
    expect(one.child.exitCode, one.output()).toBeNull()
    expect(two.child.exitCode, two.output()).toBeNull()
  }, 30_000)

  it("a peer with no id keeps the id it made up, in the default state folder", async () => {
    const home = mkdtempSync(join(tmpdir(), "picus-home-"))
    const env = peerEnv({ HOME: home, XDG_STATE_HOME: join(home, ".local", "state") })
    const first = startNode("first", peerScript, [], env)
    const id = /peer (\S+) starting/.exec(await first.waitForLine(/starting/))?.[1]
    first.signalGroup("SIGINT")
    await first.exited
    const again = startNode("again", peerScript, [], env)
    expect(await again.waitForLine(/starting/)).toContain(`peer ${id} starting`)
  }, 30_000)

  it("refuses a second live peer on the same state folder, naming the folder and the first one's pid", async () => {
    const dir = mkdtempSync(join(tmpdir(), "picus-state-"))
    const env = peerEnv()
    const first = startNode("first", peerScript, ["--peer-id", "same", "--state-dir", dir], env)
    await first.waitForLine(/starting/)
    const second = startNode("second", peerScript, ["--peer-id", "same", "--state-dir", dir], env)
    expect(await second.exited, second.output()).toBe(2)
    expect(second.output()).toContain(dir)
    expect(second.output()).toContain(`pid ${first.child.pid}`)
    expect(first.child.exitCode, "the first one runs on").toBeNull()

    // Once the first is gone (even by kill -9), the folder is free again.
    first.signalGroup("SIGKILL")
    await first.exited
    const third = startNode("third", peerScript, ["--peer-id", "same", "--state-dir", dir], env)
    await third.waitForLine(/starting/)
    expect(third.child.exitCode, third.output()).toBeNull()
  }, 30_000)
})

describe("a peer that cannot reach Redis", () => {
  it("says so with the address, never the password, and keeps retrying", async () => {
    const port = await freePort()
    const dir = mkdtempSync(join(tmpdir(), "picus-state-"))
    const peer = startNode(
      "peer",
      peerScript,
      ["--peer-id", "lonely", "--state-dir", dir, "--redis-url", `redis://:hunter2secret@127.0.0.1:${port}`],
      peerEnv(),
    )
    await peer.waitForLine(
      new RegExp(
        `cannot reach Redis at 127\\.0\\.0\\.1:${port} \\(connection refused\\); retrying in [0-9.]+s`,
      ),
      10_000,
    )
    expect(peer.output()).toMatch(/set REDIS_URL or --redis-url/)
    await sleep(4_000)
    expect(peer.child.exitCode, peer.output()).toBeNull()
    expect(peer.output()).not.toContain("hunter2secret")
    expect(peer.output()).not.toMatch(/max retries per request/i)
    const told = peer.lines.filter((l) => l.includes("cannot reach Redis")).length
    expect(told, "said once, not at every retry").toBeLessThanOrEqual(2)
  }, 30_000)

  it("registers once Redis is up", async () => {
    const redis = await startPrivateRedis({ persistent: false })
    await redis.stop()
    const dir = mkdtempSync(join(tmpdir(), "picus-state-"))
    const env = { ...peerEnv(), REDIS_URL: redis.url }
    const peer = startNode("peer", peerScript, ["--peer-id", "patient", "--state-dir", dir], env)
    const { host } = new URL(redis.url)
    await peer.waitForLine(new RegExp(`cannot reach Redis at ${host.replaceAll(".", "\\.")}`), 10_000)
    await redis.start()
    await peer.waitForLine(new RegExp(`Redis at ${host.replaceAll(".", "\\.")} is reachable`), 15_000)
    try {
      const intake = makeKeys(env.PICUS_REDIS_PREFIX).uplinkIntake
      await eventually(
        "the registration in the uplink intake",
        async () => {
          const client = new Redis(redis.url)
          try {
            return (await client.lrange(intake, 0, -1)).some((p) => p.includes('"register"'))
              ? true
              : undefined
          } finally {
            client.disconnect()
          }
        },
        15_000,
      )
    } finally {
      await killAll()
      await redis.stop()
    }
  }, 40_000)
})

describe("a peer's configuration of trust", () => {
  const noDir = () => ["--state-dir", mkdtempSync(join(tmpdir(), "picus-state-"))]

  it("refuses to start with no cluster key given or pinned, naming the ways to give one", async () => {
    const peer = startNode("peer", peerScript, noDir(), peerEnv({ PICUS_CLUSTER_PUBLIC_KEY: "" }))
    expect(await peer.exited, peer.output()).toBe(2)
    for (const fix of ["--enroll", "--cluster-key", "--trust-on-first-use"])
      expect(peer.output()).toContain(fix)
    expect(peer.output()).not.toContain("starting")
  }, 30_000)

  it("refuses a damaged enrollment string or a bad cluster key, naming the fix and never printing them", async () => {
    const enrollment = Trust.encodeEnrollment({
      token: "picus_s3cret-token-of-the-test",
      clusterKey,
      redisUser: "picus:enroll:t1",
    })
    const damaged = `${enrollment.slice(0, -9)}!!${enrollment.slice(-7)}`
    const cases: Array<[Record<string, string>, RegExp]> = [
      [
        { PICUS_TOKEN: "", PICUS_CLUSTER_PUBLIC_KEY: "", PICUS_ENROLL: damaged },
        /enrollment string.*(copy it again|damaged)/,
      ],
      [
        { PICUS_TOKEN: "", PICUS_CLUSTER_PUBLIC_KEY: "", PICUS_ENROLL: "picus_s3cret-token-of-the-test" },
        /starts with "picus-enroll-1\."/,
      ],
      [{ PICUS_ENROLL: enrollment, PICUS_CLUSTER_PUBLIC_KEY: "" }, /not both/],
      [{ PICUS_CLUSTER_PUBLIC_KEY: "sha256:nope" }, /--cluster-key.*fingerprint/],
    ]
    for (const [env, said] of cases) {
      const peer = startNode("peer", peerScript, noDir(), peerEnv(env))
      expect(await peer.exited, peer.output()).toBe(2)
      expect(peer.output()).toMatch(said)
      expect(peer.output()).not.toContain("s3cret")
      expect(peer.output()).not.toContain(enrollment.slice(15, 40))
    }
  }, 30_000)

  it("connects as the enrollment string's Redis user, with the password derived from its token", async () => {
    const env = peerEnv({ PICUS_TOKEN: "", PICUS_CLUSTER_PUBLIC_KEY: "" })
    const user = `${env.PICUS_REDIS_PREFIX}:enroll:t1`
    const token = `picus_${Trust.newPrivateKey()}`
    const admin = new Redis(testRedisUrl())
    try {
      // A user of this test's own, limited to its keys; removed at the end.
      await admin.call(
        "ACL",
        "SETUSER",
        user,
        "on",
        `>${redisPasswordOf(token)}`,
        `~${env.PICUS_REDIS_PREFIX}:*`,
        "+@all",
        "-@dangerous",
      )
      const peer = startNode("peer", peerScript, noDir(), {
        ...env,
        PICUS_ENROLL: Trust.encodeEnrollment({ token, clusterKey, redisUser: user }),
      })
      await peer.waitForLine(/starting/)
      await eventually(
        `a connection of ${user}`,
        async () => ((await admin.call("CLIENT", "LIST")) as string).includes(`user=${user} `) || undefined,
        10_000,
      )
      expect(peer.output()).not.toContain(token)
      expect(peer.output()).not.toContain(redisPasswordOf(token))
    } finally {
      await admin.call("ACL", "DELUSER", user)
      admin.disconnect()
    }
  }, 30_000)
})
