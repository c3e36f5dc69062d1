import { execFileSync } from "node:child_process"
import { existsSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { makeKeys, Protocol, redisPasswordOf, serverAclRules, sessionTokenOf, Trust } from "@picus/core"
import { sql } from "slonik"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { attempt, authAs, type Enrolled, enroll, loginAs } from "./support/attacker.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { eventually, killAll, type Running, runPicus, startPnpm } from "./support/processes.ts"
import { type PrivateRedis, startPrivateRedis } from "./support/redis.ts"

// Every attack of the trust issue, tried with the attacker's real credentials against a real server
// and two real peers, over a Redis where every party logs in as its own ACL user (the default user
// is off). Each row says what refused it: Redis (NOPERM), the server, or the peer. The same attacks
// succeed against weakened setups in the unit tests (an ACL user with +@all, a server or peer with
// its checks off), so these rows can fail.

const here = detectOs()
const SERVER_PASSWORD = "server-password"
let redis: PrivateRedis
let world: World
let server: Running
let alice: Running
let bob: Running
let enrollment: string
let mallory: Enrolled
const clusterSeed = Trust.newPrivateKey()
const cluster = Trust.signingKeyOf(clusterSeed)!
const table: Array<{ attack: string; by: string; outcome: string }> = []
const row = (attack: string, by: string, outcome: string) => table.push({ attack, by, outcome })

const keys = () => makeKeys(world.prefix)
const redisPort = () => new URL(redis.url).port
const urlAs = (user: string, password: string) =>
  `redis://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${redisPort()}`
const admin = () => loginAs(redis.url, "admin", "admin")
const asMallory = () => loginAs(redis.url, mallory.redisUser!, mallory.redisPassword!)

const openSession = async (peerId: string) =>
  (
    await world.query<{ session_id: string }>(sql.unsafe`
      select session_id::text from peer_sessions where peer_id = ${peerId} and logout_at is null`)
  )[0]?.session_id

beforeAll(async () => {
  world = await makeWorld({
    PICUS_HEARTBEAT_MS: "500",
    PICUS_GRACE_MS: "3000",
    PICUS_CLUSTER_KEY: clusterSeed,
  })
  const prefix = world.prefix
  redis = await startPrivateRedis({
    persistent: false,
    acl: [
      "user default off",
      "user admin on >admin ~* &* +@all",
      `user ${prefix}:server on >${SERVER_PASSWORD} ${serverAclRules(makeKeys(prefix)).join(" ")}`,
    ],
  })
  world.env.REDIS_URL = urlAs(`${prefix}:server`, SERVER_PASSWORD)
  delete world.env.PICUS_CLUSTER_PUBLIC_KEY
  const catalog = writeCatalog(world.dir, [
    { id: "hello", name: "Hello", os: here.os, distro: here.distro, command: "echo hello" },
    { id: "slow", name: "Slow", os: here.os, distro: here.distro, command: "sleep 4; echo real answer" },
  ])
  const created = await runPicus(["token", "create", "--name", "fleet", "--json"], world.env)
  expect(created.code, created.output).toBe(0)
  enrollment = JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!).enrollment
  server = startPnpm("server", ["--filter", "server", "start"], { ...world.env, PICUS_CATALOG: catalog })
  await server.waitForLine(/serving/)
  // Peers know only where Redis is, and their enrollment string.
  const peerEnv = { ...world.env, REDIS_URL: `redis://127.0.0.1:${redisPort()}`, PICUS_ENROLL: enrollment }
  delete (peerEnv as Record<string, string>).PICUS_CLUSTER_KEY
  const startPeer = (id: string) =>
    startPnpm(id, ["--filter", "peer", "start", "--peer-id", id, "--state-dir", join(world.dir, id)], peerEnv)
  alice = startPeer("alice")
  bob = startPeer("bob")
  await alice.waitForLine(/registered as alice/)
  await bob.waitForLine(/registered as bob/)
  const enrolled = await enroll({ redisUrl: redis.url, prefix: world.prefix, enrollment, peerId: "mallory" })
  if ("rejected" in enrolled) throw new Error(`mallory was not enrolled: ${enrolled.rejected}`)
  mallory = enrolled
}, 120_000)

afterAll(async () => {
  console.log(
    `\n| attack | tried by | outcome |\n|---|---|---|\n${table.map((r) => `| ${r.attack} | ${r.by} | ${r.outcome} |`).join("\n")}\n`,
  )
  await killAll()
  await world?.close()
  await redis?.stop()
})

describe("a peer's Redis login reaches its own inbox and the uplink, nothing else", () => {
  const refused = async (attack: string, command: [string, ...Array<string | number>]) => {
    const client = asMallory()
    try {
      const outcome = await attempt(client, ...command)
      row(attack, "a peer (its own Redis user)", outcome === "OK" ? "carried out" : `Redis: ${outcome}`)
      expect(outcome, attack).toBe("NOPERM")
    } finally {
      client.disconnect()
    }
  }
  it("reads nothing but its own inbox", async () => {
    await refused("read another peer's inbox", ["XREAD", "STREAMS", keys().peerInbox("alice"), "0-0"])
    await refused("read the uplink", ["XREAD", "STREAMS", keys().uplink, "0-0"])
    await refused("read the uplink intake", ["LRANGE", keys().uplinkIntake, "0", "-1"])
    await refused("read another peer's registration reply", ["XREAD", "STREAMS", keys().reply("x"), "0-0"])
    const own = asMallory()
    expect(await attempt(own, "XREAD", "STREAMS", keys().peerInbox("mallory"), "0-0")).toBe("OK")
    own.disconnect()
  })
  it("writes no inbox and trims no shared stream", async () => {
    const job = Protocol.encodeMessage({
      msg: "job",
      ticket: "forged-1",
      peer_id: "alice",
      token: "x",
      job: { name: "forged", os: "any", distro: "any", command: "true" },
    })
    await refused("write a job into another peer's inbox", ["XADD", keys().peerInbox("alice"), "*", "m", job])
    await refused("trim the uplink (XADD … MAXLEN 0)", ["XADD", keys().uplink, "MAXLEN", "0", "*", "m", "x"])
    await refused("trim the uplink (XTRIM)", ["XTRIM", keys().uplink, "MAXLEN", "0"])
    await refused("delete the uplink intake", ["DEL", keys().uplinkIntake])
    await refused("trim the uplink intake", ["LTRIM", keys().uplinkIntake, "1", "0"])
    await refused("pop the uplink intake", ["LPOP", keys().uplinkIntake])
    await refused("delete another peer's inbox", ["DEL", keys().peerInbox("alice")])
  })
  it("runs no administrative command and publishes on no channel", async () => {
    for (const command of [
      ["KEYS", "*"],
      ["SCAN", "0"],
      ["CONFIG", "GET", "*"],
      ["FLUSHALL"],
      ["ACL", "LIST"],
      ["MONITOR"],
    ] as const) {
      await refused(command.join(" "), [...command])
    }
    await refused("publish on the operators' channel", ["PUBLISH", keys().events, "{}"])
  })
})

describe("an enrolling peer's login sends a registration and reads its own reply, nothing else", () => {
  it("is refused everything else", async () => {
    const decoded = Trust.decodeEnrollment(enrollment)
    if (decoded._tag !== "Success") throw new Error("bad enrollment string")
    const { redisUser, token } = decoded.success
    const client = loginAs(redis.url, redisUser!, redisPasswordOf(token))
    for (const [attack, command] of [
      ["read a peer's inbox", ["XREAD", "STREAMS", keys().peerInbox("alice"), "0-0"]],
      ["write a peer's inbox", ["XADD", keys().peerInbox("alice"), "*", "m", "{}"]],
      ["read the uplink intake", ["LRANGE", keys().uplinkIntake, "0", "-1"]],
      ["list keys", ["KEYS", "*"]],
      ["trim the uplink intake", ["LTRIM", keys().uplinkIntake, "1", "0"]],
    ] as const) {
      const outcome = await attempt(client, ...(command as unknown as [string, ...Array<string>]))
      row(
        attack,
        "an enrolling peer (enrollment string)",
        outcome === "OK" ? "carried out" : `Redis: ${outcome}`,
      )
      expect(outcome, attack).toBe("NOPERM")
    }
    client.disconnect()
  })
})

describe("the server refuses what a peer sends in another's name", () => {
  it("a registration for a peer id bound to another key changes nothing", async () => {
    const before = await openSession("alice")
    const outcome = await enroll({ redisUrl: redis.url, prefix: world.prefix, enrollment, peerId: "alice" })
    row(
      "register as another peer (valid token, own key)",
      "an enrolling peer",
      "rejected" in outcome ? `server: ${outcome.rejected}` : "accepted",
    )
    expect(outcome).toEqual({ rejected: Protocol.RejectReason.wrongIdentity })
    expect(await openSession("alice")).toBe(before)
  })

  it("a replayed registration changes nothing", async () => {
    const client = admin()
    await client.rpush(keys().uplinkIntake, mallory.registration)
    client.disconnect()
    await server.waitForLine(/replayed or stale registration/)
    row("replay a registration", "a Redis administrator", "server: replayed or stale registration")
    expect(await openSession("mallory")).toBe(mallory.sessionId)
  })

  it("a forged result, heartbeat or logout for another peer is refused, and the real result stands", async () => {
    const ticket = await eventually(
      "alice's slow ticket delivered",
      async () =>
        (
          await world.query<{ ticket: string }>(sql.unsafe`
          select ticket from tickets where peer_id = 'alice' and job_name = 'Slow' and state = 'delivered'`)
        )[0]?.ticket,
    )
    const aliceSession = (await openSession("alice"))!
    const forged = (message: Protocol.PeerMessage) =>
      Trust.macPayload(Protocol.encodeMessage(message), mallory.sessionToken)
    const client = asMallory()
    await client.rpush(
      keys().uplinkIntake,
      forged({ msg: "result", ticket, peer_id: "alice", token: aliceSession, result: "forged answer" }),
      forged({ msg: "logout", peer_id: "alice", token: aliceSession, reason: "forged" }),
    )
    client.disconnect()
    const result = await eventually(
      "alice's real answer",
      async () =>
        (
          await world.query<{ output: string; peer_id: string }>(sql.unsafe`
          select output, peer_id from job_results where ticket = ${ticket}`)
        )[0],
    )
    row(
      "forge a result for another peer's ticket",
      "a peer",
      `server refused it; stored: ${JSON.stringify(result.output.trim())}`,
    )
    row("forge a logout for another peer", "a peer", "server refused it; the session stays open")
    expect(result).toEqual({ output: "real answer\n", peer_id: "alice" })
    expect(await openSession("alice")).toBe(aliceSession)
  })
})

describe("a Redis administrator without the cluster key makes no peer act", () => {
  const pwned = () => join(world.dir, "pwned")
  const jobFor = (peerId: string, token: string, ticket: string) =>
    Protocol.encodeMessage({
      msg: "job",
      ticket,
      peer_id: peerId,
      token,
      job: { name: "forged", os: "any", distro: "any", command: `touch ${pwned()}` },
    })

  it("an unsigned job, one signed by another key, and one for another session are not run", async () => {
    const session = (await openSession("alice"))!
    const other = Trust.signingKeyOf(Trust.newPrivateKey())!
    const client = admin()
    await client.xadd(keys().peerInbox("alice"), "*", "m", jobFor("alice", session, "forged-unsigned"))
    await client.xadd(
      keys().peerInbox("alice"),
      "*",
      "m",
      Trust.signPayload(jobFor("alice", session, "forged-foreign"), other),
    )
    await client.xadd(
      keys().peerInbox("alice"),
      "*",
      "m",
      Trust.signPayload(jobFor("alice", "an-old-session", "forged-replay"), cluster),
    )
    client.disconnect()
    await alice.waitForLine(/forged-unsigned/)
    await alice.waitForLine(/forged-foreign/)
    await alice.waitForLine(/forged-replay/)
    row("write an unsigned job into a peer's inbox", "a Redis administrator", "peer refused it (unsigned)")
    row("write a job signed by another key", "a Redis administrator", "peer refused it (bad signature)")
    row(
      "replay a signed job of another session",
      "a Redis administrator",
      "peer refused it (another session)",
    )
    expect(existsSync(pwned())).toBe(false)
  })

  it("a forged shutdown is ignored", async () => {
    const client = admin()
    await client.xadd(
      keys().peerInbox("bob"),
      "*",
      "m",
      Protocol.encodeMessage({ msg: "shutdown", token: (await openSession("bob"))!, reason: "forged" }),
    )
    client.disconnect()
    await bob.waitForLine(/refused.*shutdown|shutdown.*refused/)
    row("send a forged shutdown", "a Redis administrator", "peer refused it (unsigned); it keeps serving")
    expect(bob.output()).not.toMatch(/server shutdown.*forged/)
    expect(await openSession("bob")).toBeDefined()
  })
})

describe("no usable secret at rest or in logs", () => {
  it("a pg_dump and every log line hold no token, session token, Redis password or key", async () => {
    const dump = execFileSync("pg_dump", [world.db.url], { maxBuffer: 64 * 1024 * 1024 }).toString()
    const sessionIds = (
      await world.query<{ session_id: string }>(sql.unsafe`select session_id::text from peer_sessions`)
    ).map((r) => r.session_id)
    const token = (Trust.decodeEnrollment(enrollment) as { success: Trust.Enrollment }).success.token
    const secrets = [
      ["the enrollment token", token],
      ["the cluster key", clusterSeed],
      ["a Redis password", mallory.redisPassword!],
      ...sessionIds.map(
        (id) => ["a session token", sessionTokenOf(Trust.sessionKeyOf(clusterSeed), id)] as const,
      ),
    ] as const
    const logs = [server, alice, bob].map((p) => p.output()).join("\n")
    writeFileSync(join(world.dir, "dump.sql"), dump)
    for (const [what, secret] of secrets) {
      expect(dump.includes(secret), `${what} in the pg_dump`).toBe(false)
      expect(logs.includes(secret), `${what} in a log`).toBe(false)
    }
    row(
      "read secrets from a pg_dump and the logs",
      "a database reader",
      `none of ${secrets.length} secrets found`,
    )
  })
})

describe("revoking a token", () => {
  it("ends its sessions at once with reason revoked and drops their Redis users", async () => {
    const revoked = await runPicus(["token", "revoke", "1"], world.env)
    expect(revoked.code, revoked.output).toBe(0)
    const reasons = await eventually("three revoked sessions", async () => {
      const rows = await world.query<{ peer_id: string; logout_reason: string }>(sql.unsafe`
        select peer_id, logout_reason from peer_sessions where logout_reason = 'revoked' order by peer_id`)
      return rows.length === 3 ? rows : undefined
    })
    expect(reasons.map((r) => r.peer_id)).toEqual(["alice", "bob", "mallory"])
    const outcome = await authAs(redis.url, mallory.redisUser!, mallory.redisPassword!)
    row("log in with a revoked session's Redis user", "a peer", `Redis: ${outcome}`)
    expect(outcome).toBe("WRONGPASS")
    const decoded = Trust.decodeEnrollment(enrollment) as { success: Trust.Enrollment }
    const enroller = await authAs(
      redis.url,
      decoded.success.redisUser!,
      redisPasswordOf(decoded.success.token),
    )
    row("log in with a revoked token's enroll user", "an enrolling peer", `Redis: ${enroller}`)
    expect(enroller).toBe("WRONGPASS")
    await alice.waitForLine(/revoked|WRONGPASS|registration rejected/)
  })
})
