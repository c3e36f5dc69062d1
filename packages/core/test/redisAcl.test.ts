import { randomBytes } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { afterAll, beforeAll } from "vitest"
import { enrollAclRules, makeKeys, peerAclRules } from "../src/keys.ts"
import { redisPasswordHash } from "../src/secrets.ts"
import { deleteKeysWithPrefix, testKeyPrefix, testRedisUrl } from "../src/testing/index.ts"
import { layerMemoryAcl, layerRedisAcl, makeMemoryAcl, RedisAcl } from "../src/transport/RedisAcl.ts"
import { layerRedis } from "../src/transport/redis.ts"
import { Transport } from "../src/transport/Transport.ts"

/**
 * The peers' Redis users, with real logins on the shared Redis (users and keys under a prefix of
 * this run, deleted afterwards): each rule holds, and a weakened user shows the same attacks work
 * when it does not.
 */

const url = testRedisUrl()
const prefix = testKeyPrefix()
const keys = makeKeys(prefix)
const created = new Set<string>()
const admin = new Redis(url)

const password = () => randomBytes(24).toString("base64url")

/** Creates a user through the real RedisAcl layer and remembers to delete it. */
const makeUser = (name: string, secret: string, rules: ReadonlyArray<string>) => {
  created.add(name)
  return Effect.runPromise(
    Effect.gen(function* () {
      const acl = yield* RedisAcl
      yield* acl.setUser(name, redisPasswordHash(secret), rules)
    }).pipe(Effect.scoped, Effect.provide(layerRedisAcl({ url }))),
  )
}

/** What the servers have written by then: a shared stream with its group, inboxes, a reply, ... */
const seed = async () => {
  const seeded = [
    keys.uplink,
    keys.peerInbox("p1"),
    keys.peerInbox("p2"),
    keys.reply("nonce-1"),
    keys.deadLetters,
    keys.serverInbox("s1"),
    keys.uplinkIntake,
    keys.peerOwner("p1"),
    keys.intakeDropped,
  ]
  await admin.del(...seeded)
  await admin.xgroup("CREATE", keys.uplink, "servers", "0", "MKSTREAM")
  await admin.xadd(keys.uplink, "*", "m", "a peer's register")
  await admin.xadd(keys.peerInbox("p1"), "*", "m", "job for p1")
  await admin.xadd(keys.peerInbox("p2"), "*", "m", "job for p2")
  await admin.xadd(keys.reply("nonce-1"), "*", "m", "reply to nonce-1")
  await admin.xadd(keys.deadLetters, "*", "m", "a dead letter")
  await admin.xadd(keys.serverInbox("s1"), "*", "m", "forwarded")
  await admin.rpush(keys.uplinkIntake, "pushed by another peer")
}

beforeAll(seed)

afterAll(async () => {
  if (created.size > 0) await admin.call("ACL", "DELUSER", ...created)
  admin.disconnect()
  await deleteKeysWithPrefix(url, prefix)
})

/** A command as `user`, on a connection of its own: "allowed" (with the reply) or the error. */
const attempt = async (user: string, secret: string, args: ReadonlyArray<string>) => {
  const client = new Redis(url, {
    username: user,
    password: secret,
    enableReadyCheck: false,
    disableClientInfo: true,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  })
  client.on("error", () => {})
  try {
    const reply = await client.call(args[0]!, ...args.slice(1))
    return { allowed: true, reply, error: "" }
  } catch (error) {
    return { allowed: false, reply: undefined, error: error instanceof Error ? error.message : String(error) }
  } finally {
    client.disconnect()
  }
}

/** What Redis would say to the command, without running it (for what must never run here). */
const dryRun = async (user: string, args: ReadonlyArray<string>) =>
  String(await admin.call("ACL", "DRYRUN", user, ...args))

interface Attack {
  readonly what: string
  readonly args: ReadonlyArray<string>
  /** Never sent to the shared Redis unless ACL DRYRUN says it is refused. */
  readonly destructive?: boolean
}

const sharedStreamAttacks: ReadonlyArray<Attack> = [
  { what: "XADD on the uplink stream", args: ["XADD", keys.uplink, "*", "m", "forged"] },
  { what: "XADD MAXLEN 0 on the uplink stream", args: ["XADD", keys.uplink, "MAXLEN", "0", "*", "m", "x"] },
  { what: "XTRIM of the uplink stream", args: ["XTRIM", keys.uplink, "MAXLEN", "0"] },
  { what: "DEL of the uplink stream", args: ["DEL", keys.uplink] },
  {
    what: "XADD MAXLEN 0 on the dead letters",
    args: ["XADD", keys.deadLetters, "MAXLEN", "0", "*", "m", "x"],
  },
  {
    what: "XADD MAXLEN 0 on a server's stream",
    args: ["XADD", keys.serverInbox("s1"), "MAXLEN", "0", "*", "m", "x"],
  },
  { what: "XADD MAXLEN 0 on a reply", args: ["XADD", keys.reply("nonce-1"), "MAXLEN", "0", "*", "m", "x"] },
  { what: "XTRIM of the intake", args: ["XTRIM", keys.uplinkIntake, "MAXLEN", "0"] },
  { what: "DEL of the intake", args: ["DEL", keys.uplinkIntake] },
  { what: "LRANGE of the intake (others' messages)", args: ["LRANGE", keys.uplinkIntake, "0", "-1"] },
  { what: "LPOP of the intake", args: ["LPOP", keys.uplinkIntake] },
  { what: "LTRIM of the intake", args: ["LTRIM", keys.uplinkIntake, "1", "0"] },
  { what: "RPUSH elsewhere", args: ["RPUSH", keys.intakeDropped, "x"] },
  {
    what: "a script deleting the uplink",
    args: ["EVAL", "return redis.call('DEL', KEYS[1])", "1", keys.uplink],
  },
  { what: "KEYS", args: ["KEYS", `${prefix}:*`] },
  { what: "SCAN", args: ["SCAN", "0", "MATCH", `${prefix}:*`] },
  { what: "MONITOR", args: ["MONITOR"], destructive: true },
  { what: "CONFIG GET", args: ["CONFIG", "GET", "requirepass"] },
  { what: "FLUSHALL", args: ["FLUSHALL"], destructive: true },
  { what: "PUBLISH on the feed", args: ["PUBLISH", keys.events, "forged event"] },
  { what: "SUBSCRIBE to the feed", args: ["SUBSCRIBE", keys.events] },
  { what: "ACL LIST", args: ["ACL", "LIST"] },
  { what: "SET an owner mark", args: ["SET", keys.peerOwner("p1"), "me"] },
]

const peerAttacks: ReadonlyArray<Attack> = [
  { what: "XREAD of another peer's inbox", args: ["XREAD", "STREAMS", keys.peerInbox("p2"), "0"] },
  { what: "XREVRANGE of another peer's inbox", args: ["XREVRANGE", keys.peerInbox("p2"), "+", "-"] },
  { what: "XADD to another peer's inbox", args: ["XADD", keys.peerInbox("p2"), "*", "m", "forged job"] },
  { what: "XTRIM of another peer's inbox", args: ["XTRIM", keys.peerInbox("p2"), "MAXLEN", "0"] },
  { what: "XADD to its own inbox", args: ["XADD", keys.peerInbox("p1"), "*", "m", "forged job"] },
  { what: "XREAD of a reply", args: ["XREAD", "STREAMS", keys.reply("nonce-1"), "0"] },
  ...sharedStreamAttacks,
]

const enrollAttacks: ReadonlyArray<Attack> = [
  { what: "XREAD of a peer's inbox", args: ["XREAD", "STREAMS", keys.peerInbox("p1"), "0"] },
  { what: "XREVRANGE of a reply", args: ["XREVRANGE", keys.reply("nonce-1"), "+", "-"] },
  { what: "XADD to a reply", args: ["XADD", keys.reply("nonce-1"), "*", "m", "forged reply"] },
  { what: "XTRIM of a reply", args: ["XTRIM", keys.reply("nonce-1"), "MAXLEN", "0"] },
  { what: "DEL of a reply", args: ["DEL", keys.reply("nonce-1")] },
  ...sharedStreamAttacks,
]

/** Every attack is refused with NOPERM, and the shared keys are as they were. */
const expectRefused = async (user: string, secret: string, attacks: ReadonlyArray<Attack>) => {
  for (const attack of attacks) {
    if (attack.destructive) {
      const verdict = await dryRun(user, attack.args)
      assert.notStrictEqual(verdict, "OK", `${attack.what} would be allowed: not sent`)
    }
    const outcome = await attempt(user, secret, attack.args)
    assert.isFalse(outcome.allowed, `${attack.what} was allowed`)
    assert.match(outcome.error, /^NOPERM/, attack.what)
  }
  assert.strictEqual(await admin.xlen(keys.uplink), 1, "the uplink is untouched")
  assert.strictEqual(await admin.xlen(keys.deadLetters), 1)
  assert.strictEqual(await admin.xlen(keys.serverInbox("s1")), 1)
  assert.strictEqual(await admin.xlen(keys.reply("nonce-1")), 1)
  assert.strictEqual(await admin.xlen(keys.peerInbox("p2")), 1)
  assert.isNull(await admin.get(keys.peerOwner("p1")))
  assert.deepStrictEqual((await admin.lrange(keys.uplinkIntake, 0, 0)).slice(0, 1), [
    "pushed by another peer",
  ])
}

/** The ACL LOG entries of `user` (what Redis refused it). */
const refusalsOf = async (user: string) => {
  const entries = (await admin.call("ACL", "LOG", "1000")) as Array<Array<string | number>>
  return entries
    .map((e) => Object.fromEntries(Array.from({ length: e.length / 2 }, (_, i) => [e[2 * i], e[2 * i + 1]])))
    .filter((e) => e.username === user)
}

/** The transport a peer uses, logged in as its own user. */
const asUser = (username: string, secret: string) =>
  layerRedis({ url, prefix, username, password: secret, restrictedLogin: true })

describe("RedisAcl", () => {
  it.effect("sets, lists and drops users under a prefix; a user set again is replaced whole", () =>
    Effect.gen(function* () {
      const acl = yield* RedisAcl
      const name = `${prefix}:peer:listed`
      created.add(name)
      const first = redisPasswordHash("one")
      yield* acl.setUser(name, first, peerAclRules(keys, "listed"))
      assert.deepStrictEqual(yield* acl.users(`${prefix}:`), [name])
      assert.deepStrictEqual(yield* acl.users("nobody-has-this-prefix:"), [])
      const [line] = yield* acl.list(`${prefix}:`)
      assert.include(line, `#${first}`)
      assert.include(line, "+rpush")
      const second = redisPasswordHash("two")
      yield* acl.setUser(name, second, peerAclRules(keys, "listed"))
      const [again] = yield* acl.list(`${prefix}:`)
      assert.include(again, `#${second}`)
      assert.notInclude(again, first, "the old password is gone")
      const badHash = yield* Effect.flip(acl.setUser(name, "not a hash", []))
      assert.strictEqual(badHash._tag, "AclError")
      assert.strictEqual(yield* acl.deleteUsers([name, `${prefix}:peer:never-made`]), 1)
      assert.deepStrictEqual(yield* acl.users(`${prefix}:`), [])
    }).pipe(Effect.provide(layerRedisAcl({ url }))),
  )

  it.effect("the memory layer keeps what it was given, and a restart loses it", () =>
    Effect.gen(function* () {
      const memory = makeMemoryAcl()
      yield* memory.acl.setUser("p:peer:a", redisPasswordHash("x"), ["+ping"])
      assert.deepStrictEqual(memory.users.get("p:peer:a")?.rules, ["+ping"])
      assert.deepStrictEqual(yield* memory.acl.users("p:"), ["p:peer:a"])
      yield* memory.restart
      assert.deepStrictEqual(yield* memory.acl.users("p:"), [])
      const acl = yield* RedisAcl
      assert.strictEqual(yield* acl.deleteUsers(["nobody"]), 0)
    }).pipe(Effect.provide(layerMemoryAcl())),
  )
})

describe("a peer's Redis user", () => {
  it.live("pushes onto the intake and reads and trims its own inbox, through the transport", () =>
    Effect.gen(function* () {
      const user = keys.peerUser("p1")
      const secret = password()
      yield* Effect.promise(() => makeUser(user, secret, peerAclRules(keys, "p1")))
      yield* Effect.gen(function* () {
        const t = yield* Transport
        yield* t.sendUplink("a result")
        yield* t.sendUplinkBatch(["a heartbeat", "a logout"])
        const reader = yield* t.inboxReader("p1")
        const entries = yield* reader.read("0-0", { count: 10, blockMs: 0 })
        assert.deepStrictEqual(
          entries.map((e) => e.payload),
          ["job for p1"],
        )
        assert.strictEqual(yield* t.inboxTail("p1"), entries[0]!.id)
        yield* t.trimInbox("p1", entries[0]!.id)
      }).pipe(Effect.scoped, Effect.provide(asUser(user, secret)))
      assert.deepStrictEqual(
        (yield* Effect.promise(() => admin.lrange(keys.uplinkIntake, 1, -1))).slice(-3),
        ["a result", "a heartbeat", "a logout"],
      )
      assert.strictEqual(yield* Effect.promise(() => admin.xlen(keys.peerInbox("p1"))), 0)
      // Nothing the connection sent on its own was refused (no INFO ready check, no CLIENT SETINFO).
      assert.deepStrictEqual(yield* Effect.promise(() => refusalsOf(user)), [])
      yield* Effect.promise(() => admin.xadd(keys.peerInbox("p1"), "*", "m", "job for p1"))
    }),
  )

  it.live("works on a /db index other than 0: its rules let it SELECT, and nothing it sends is refused", () =>
    Effect.gen(function* () {
      const user = keys.peerUser("p-db9")
      const secret = password()
      yield* Effect.promise(() => makeUser(user, secret, peerAclRules(keys, "p-db9", { db: 9 })))
      const db9 = `${url.replace(/\/\d*$/, "")}/9`
      yield* Effect.gen(function* () {
        const t = yield* Transport
        yield* t.sendUplink("in db 9")
        yield* t.inboxTail("p-db9")
      }).pipe(
        Effect.scoped,
        Effect.provide(
          layerRedis({ url: db9, prefix, username: user, password: secret, restrictedLogin: true }),
        ),
      )
      assert.deepStrictEqual(yield* Effect.promise(() => refusalsOf(user)), [])
      const direct = new Redis(db9)
      const pushed = yield* Effect.promise(() => direct.lrange(keys.uplinkIntake, 0, -1))
      yield* Effect.promise(() => direct.del(keys.uplinkIntake))
      direct.disconnect()
      assert.deepStrictEqual(pushed, ["in db 9"])
    }),
  )

  it("is refused everything else: other inboxes, shared streams, the intake's contents, KEYS, SCAN, MONITOR, CONFIG, FLUSHALL, PUBLISH", async () => {
    const user = keys.peerUser("p1")
    const secret = password()
    await makeUser(user, secret, peerAclRules(keys, "p1"))
    await expectRefused(user, secret, peerAttacks)
  })

  it("cannot log in with another password, nor once its user is dropped", async () => {
    const user = keys.peerUser("p3")
    const secret = password()
    await makeUser(user, secret, peerAclRules(keys, "p3"))
    assert.isTrue((await attempt(user, secret, ["PING"])).allowed)
    assert.match((await attempt(user, `${secret}x`, ["PING"])).error, /WRONGPASS/)
    await admin.call("ACL", "DELUSER", user)
    assert.match((await attempt(user, secret, ["PING"])).error, /WRONGPASS/)
  })

  it("a peer id with pattern characters gets its own inbox only", async () => {
    const user = keys.peerUser("p*")
    const secret = password()
    await makeUser(user, secret, peerAclRules(keys, "p*"))
    await admin.xadd(keys.peerInbox("p*"), "*", "m", "job for p*")
    assert.isTrue((await attempt(user, secret, ["XREAD", "STREAMS", keys.peerInbox("p*"), "0"])).allowed)
    for (const other of ["p1", "p2"])
      assert.match(
        (await attempt(user, secret, ["XREAD", "STREAMS", keys.peerInbox(other), "0"])).error,
        /NOPERM/,
      )
  })
})

describe("an enrolling peer's Redis user", () => {
  it.live("pushes onto the intake and reads a reply whose nonce it knows, through the transport", () =>
    Effect.gen(function* () {
      const user = keys.enrollUser(7)
      const secret = password()
      yield* Effect.promise(() => makeUser(user, secret, enrollAclRules(keys)))
      yield* Effect.gen(function* () {
        const t = yield* Transport
        yield* t.sendUplink("a register")
        const reader = yield* t.replyReader("nonce-1")
        const entries = yield* reader.read("0-0", { count: 10, blockMs: 0 })
        assert.deepStrictEqual(
          entries.map((e) => e.payload),
          ["reply to nonce-1"],
        )
      }).pipe(Effect.scoped, Effect.provide(asUser(user, secret)))
      assert.deepStrictEqual(yield* Effect.promise(() => refusalsOf(user)), [])
    }),
  )

  it("is refused everything else: inboxes, writing or trimming replies, shared streams, KEYS, SCAN, ...", async () => {
    const user = keys.enrollUser(8)
    const secret = password()
    await makeUser(user, secret, enrollAclRules(keys))
    await expectRefused(user, secret, enrollAttacks)
  })
})

describe("a weakened setup (a peer given ~{p}:* +@all)", () => {
  it("lets the same attacks through: the rules above are what stops them", async () => {
    const user = `${prefix}:weak`
    const secret = password()
    await makeUser(user, secret, [`~${prefix}:*`, `&${prefix}:*`, "+@all"])
    const safeToRun = peerAttacks.filter((a) => !a.destructive)
    // Each runs after a fresh copy of what it may destroy.
    for (const attack of safeToRun) {
      await seed()
      const outcome = await attempt(user, secret, attack.args)
      // Allowed to run (WRONGTYPE, say, is Redis running it on the wrong kind of key).
      assert.notMatch(outcome.error, /NOPERM/, attack.what)
    }
    for (const attack of peerAttacks.filter((a) => a.destructive))
      assert.strictEqual(await dryRun(user, attack.args), "OK", attack.what)
    // Another peer's job read, the uplink emptied.
    await seed()
    const read = await attempt(user, secret, ["XREAD", "STREAMS", keys.peerInbox("p2"), "0"])
    assert.include(JSON.stringify(read.reply), "job for p2")
    await attempt(user, secret, ["XADD", keys.uplink, "MAXLEN", "0", "*", "m", "x"])
    assert.strictEqual(await admin.xlen(keys.uplink), 0)
    await seed()
  })
})
