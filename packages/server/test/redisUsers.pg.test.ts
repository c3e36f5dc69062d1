import { randomUUID } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import {
  layerRedisAcl,
  makeKeys,
  makeMemoryAcl,
  RedisAcl,
  redisPasswordHash,
  redisPasswordOf,
  SessionStore,
  Store,
  serverAclRules,
  TokenStore,
  Transport,
  TransportRedis,
  Trust,
} from "@picus/core"
import {
  commandAs,
  connectAs,
  deleteAclUsersWithPrefix,
  deleteKeysWithPrefix,
  testKeyPrefix,
  testRedisUrl,
} from "@picus/core/testing"
import { Context, Effect, Fiber, Layer, Stream } from "effect"
import { TestClock } from "effect/testing"
import { createPool, type DatabasePool, sql } from "slonik"
import { PeerAccess } from "../src/access/PeerAccess.ts"
import { layerRedisPeerAccess, makeRedisUsers } from "../src/access/RedisPeerAccess.ts"
import { makeMemoryRedisUsers, RedisUserStore } from "../src/access/RedisUsers.ts"
import { PgStore } from "../src/db/PgStore.ts"
import { addSeedPeer, createToken, revokeTokens } from "../src/enrollment.ts"
import { checkEnrollmentToken, enrollmentTokensFrom, verifyEnrollmentToken } from "../src/tokens.ts"
import { freshDatabase } from "./support/database.ts"

/**
 * The peers' Redis users on the real services: PostgreSQL keeps their record (hashes only), Redis
 * the users themselves (the shared Redis, users and keys under a prefix of the test's own, deleted
 * afterwards), and real logins show what each can do.
 */

const url = testRedisUrl()

class Test extends Context.Service<Test, { readonly prefix: string; readonly pool: DatabasePool }>()(
  "test/RedisUsers",
) {}

/** A fresh database and prefix, the Store over them, the real RedisAcl and transport. */
const services = () =>
  Layer.unwrap(
    Effect.gen(function* () {
      const db = yield* Effect.acquireRelease(
        Effect.promise(() => freshDatabase()),
        (d) => Effect.promise(() => d.drop()),
      )
      const prefix = testKeyPrefix()
      yield* Effect.addFinalizer(() =>
        Effect.promise(async () => {
          await deleteAclUsersWithPrefix(url, prefix)
          await deleteKeysWithPrefix(url, prefix)
        }),
      )
      const pool = yield* Effect.acquireRelease(
        Effect.promise(() => createPool(db.url, { maxPoolSize: 2 })),
        (p) => Effect.promise(() => p.end()),
      )
      return Layer.mergeAll(
        PgStore.layer(db.url),
        layerRedisAcl({ url }),
        TransportRedis.layerRedis({ url, prefix }),
        Layer.succeed(Test, { prefix, pool }),
      )
    }),
  )

const redisUsers = Effect.gen(function* () {
  const { prefix } = yield* Test
  return yield* makeRedisUsers({ prefix })
})

/** What a login can do: "ok" or the error's first word (NOPERM, WRONGPASS). */
const as = (user: string, password: string, ...args: Array<string>) =>
  Effect.promise(() => commandAs(url, user, password, ...args))

const login = (peerId: string, tokenId: number | null = null) =>
  Effect.gen(function* () {
    const store = yield* Store
    const sessionId = randomUUID()
    yield* store.login({
      peerId,
      sessionId,
      serverId: "s1",
      serverIp: null,
      os: "linux",
      distro: "debian",
      hostname: null,
      agentVersion: "test",
      leaseMs: 60_000,
      tokenId,
    })
    return sessionId
  })

const rowsOf = (pool: DatabasePool) =>
  Effect.promise(() =>
    pool.any(
      sql.unsafe`select name, kind, session_id::text as session, password_hash from redis_users order by name`,
    ),
  ) as Effect.Effect<
    ReadonlyArray<{ name: string; kind: string; session: string | null; password_hash: string }>
  >

describe("Redis users of sessions", () => {
  it.live("a grant makes a user that may do what a peer may; PostgreSQL keeps only its hash", () =>
    Effect.gen(function* () {
      const { prefix, pool } = yield* Test
      const keys = makeKeys(prefix)
      const users = yield* redisUsers
      const session = yield* login("p1")
      const creds = (yield* users.grant("p1", session))!
      assert.strictEqual(creds.user, keys.peerUser("p1"))
      assert.strictEqual(yield* as(creds.user, creds.password, "RPUSH", keys.uplinkIntake, "x"), "ok")
      assert.strictEqual(
        yield* as(creds.user, creds.password, "XREAD", "STREAMS", keys.peerInbox("p1"), "0"),
        "ok",
      )
      assert.strictEqual(
        yield* as(creds.user, creds.password, "XREAD", "STREAMS", keys.peerInbox("p2"), "0"),
        "NOPERM",
      )
      const rows = yield* rowsOf(pool)
      assert.deepStrictEqual(
        rows.map((r) => [r.name, r.kind, r.session, r.password_hash]),
        [[creds.user, "peer", session, redisPasswordHash(creds.password)]],
      )
      const everything = yield* Effect.promise(() =>
        pool.anyFirst(sql.unsafe`select row_to_json(r)::text from redis_users r`),
      )
      assert.notInclude(String(everything), creds.password, "the password is nowhere in PostgreSQL")
    }).pipe(Effect.scoped, Effect.provide(services())),
  )

  it.live(
    "a new session's grant replaces the password and closes the old connections; releases touch their own session only",
    () =>
      Effect.gen(function* () {
        const users = yield* redisUsers
        const first = yield* login("p1")
        const old = (yield* users.grant("p1", first))!
        const connected = connectAs(url, old.user, old.password)
        assert.strictEqual(yield* Effect.promise(() => connected.send("PING")), "ok")
        const second = yield* login("p1")
        const fresh = (yield* users.grant("p1", second))!
        const after = yield* Effect.promise(() => connected.send("PING"))
        assert.notStrictEqual(after, "ok", "the old session's connection was closed")
        connected.close()
        assert.strictEqual(yield* as(old.user, old.password, "PING"), "WRONGPASS")
        assert.strictEqual(yield* as(fresh.user, fresh.password, "PING"), "ok")
        yield* users.release("p1", first)
        assert.strictEqual(
          yield* as(fresh.user, fresh.password, "PING"),
          "ok",
          "the old release left the new user",
        )
        yield* users.release("p1", second)
        assert.strictEqual(yield* as(fresh.user, fresh.password, "PING"), "WRONGPASS")
        assert.deepStrictEqual(yield* rowsOf((yield* Test).pool), [])
      }).pipe(Effect.scoped, Effect.provide(services())),
  )

  it.live("a provisioned seed peer keeps its user: a session of that id gets none of its own", () =>
    Effect.gen(function* () {
      const users = yield* redisUsers
      const { secret, tokenId, redis } = yield* addSeedPeer("seed-1", { users })
      assert.isDefined(redis)
      assert.strictEqual(yield* as(redis!.user, redis!.password, "PING"), "ok")
      assert.isUndefined(yield* users.grant("seed-1", yield* login("seed-1", tokenId)))
      yield* users.release("seed-1", randomUUID())
      assert.strictEqual(yield* as(redis!.user, redis!.password, "PING"), "ok")
      // Its token enrolls that peer id alone.
      const tokens = enrollmentTokensFrom("")
      const mine = yield* checkEnrollmentToken(tokens, secret, "seed-1")
      assert.deepStrictEqual(mine, { accepted: true, tokenId })
      const other = yield* checkEnrollmentToken(tokens, secret, "seed-2")
      assert.isFalse(other.accepted)
      const unchecked = yield* verifyEnrollmentToken(tokens, secret)
      assert.isTrue(unchecked._tag === "Some", "without the peer id a bound token is refused")
    }).pipe(Effect.scoped, Effect.provide(services())),
  )
})

describe("reconciling Redis users with PostgreSQL", () => {
  it.live("creates again what Redis lost, drops what PostgreSQL does not know, leaves the rest", () =>
    Effect.gen(function* () {
      const { prefix } = yield* Test
      const keys = makeKeys(prefix)
      const users = yield* redisUsers
      const acl = yield* RedisAcl
      const token = yield* createToken("laptop", { users, clusterKey: undefined })
      const session = yield* login("p1")
      const peer = (yield* users.grant("p1", session))!
      const { redis: seed } = yield* addSeedPeer("seed-1", { users })
      // Redis restarted without its users; someone left a user of the prefix, and there is the
      // operator's own user under it, which is not the servers' to manage.
      yield* acl.deleteUsers(yield* acl.users(`${prefix}:`))
      const ghost = keys.peerUser("ghost")
      const operator = `${prefix}:operator`
      yield* acl.setUser(ghost, redisPasswordHash("g"), ["+ping"])
      yield* acl.setUser(operator, redisPasswordHash("o"), ["+ping"])
      assert.strictEqual(yield* as(peer.user, peer.password, "PING"), "WRONGPASS")

      const changed = yield* users.reconcile
      assert.sameMembers([...changed.created], [token.redisUser!, peer.user, seed!.user])
      assert.deepStrictEqual(changed.dropped, [ghost])
      assert.strictEqual(yield* as(peer.user, peer.password, "RPUSH", keys.uplinkIntake, "x"), "ok")
      assert.strictEqual(yield* as(seed!.user, seed!.password, "PING"), "ok")
      assert.strictEqual(
        yield* as(token.redisUser!, redisPasswordOf(token.secret), "RPUSH", keys.uplinkIntake, "y"),
        "ok",
      )
      assert.strictEqual(yield* as(ghost, "g", "PING"), "WRONGPASS")
      assert.strictEqual(yield* as(operator, "o", "PING"), "ok", "not the servers' user")
      assert.deepStrictEqual(yield* users.reconcile, { created: [], dropped: [] })
    }).pipe(Effect.scoped, Effect.provide(services())),
  )

  it.live("drops the user of a session that ended without releasing it (a release that failed)", () =>
    Effect.gen(function* () {
      const { pool } = yield* Test
      const users = yield* redisUsers
      const store = yield* Store
      const session = yield* login("p1")
      const creds = (yield* users.grant("p1", session))!
      yield* store.logout({ peerId: "p1", sessionId: session, epoch: 1, reason: "timeout", serverId: "s1" })
      assert.deepStrictEqual(yield* users.reconcile, { created: [], dropped: [] }, "within its grace")
      yield* Effect.promise(() =>
        pool.query(sql.unsafe`update redis_users set created_at = now() - interval '2 minutes'`),
      )
      assert.deepStrictEqual((yield* users.reconcile).dropped, [creds.user])
      assert.strictEqual(yield* as(creds.user, creds.password, "PING"), "WRONGPASS")
    }).pipe(Effect.scoped, Effect.provide(services())),
  )

  it.live("a servers' login without +acl is refused at start, naming the fix; the documented one works", () =>
    Effect.gen(function* () {
      const { prefix } = yield* Test
      const keys = makeKeys(prefix)
      const acl = yield* RedisAcl
      const withoutAcl = `${prefix}:server-no-acl`
      const documented = `${prefix}:server`
      yield* acl.setUser(withoutAcl, redisPasswordHash("a"), [
        `~${prefix}:*`,
        `&${prefix}:*`,
        "+@all",
        "-@dangerous",
      ])
      yield* acl.setUser(documented, redisPasswordHash("b"), serverAclRules(keys))
      const start = (username: string, password: string) =>
        Effect.gen(function* () {
          const access = yield* PeerAccess
          return yield* access.grant("p1", randomUUID())
        }).pipe(
          Effect.scoped,
          Effect.provide(
            layerRedisPeerAccess({ prefix }).pipe(Layer.provide(layerRedisAcl({ url, username, password }))),
          ),
        )
      const refused = yield* Effect.flip(start(withoutAcl, "a"))
      assert.strictEqual(refused._tag, "AccessError")
      assert.include(refused.message, "+acl")
      assert.include(refused.message, "PICUS_REDIS_USERS=off")
      const granted = yield* start(documented, "b")
      assert.strictEqual(granted?.user, keys.peerUser("p1"))
    }).pipe(Effect.scoped, Effect.provide(services())),
  )
})

describe("the reconciler's schedule", () => {
  it.effect("reconciles at start, when Redis comes back, and every minute", () =>
    Effect.gen(function* () {
      const memory = makeMemoryAcl()
      const record = makeMemoryRedisUsers()
      yield* record.putEnroll({ name: "p:enroll:1", tokenId: 1, passwordHash: redisPasswordHash("x") })
      const layer = layerRedisPeerAccess({ prefix: "p", reconcileEveryMs: 60_000 }).pipe(
        Layer.provide(Layer.succeed(RedisAcl, memory.acl)),
        Layer.provide(Layer.succeed(RedisUserStore, record)),
      )
      yield* Effect.gen(function* () {
        yield* PeerAccess
        assert.isTrue(memory.users.has("p:enroll:1"), "at start")
        // The reconciler is waiting by now.
        for (let i = 0; i < 10; i++) yield* Effect.yieldNow
        yield* memory.restart
        for (let i = 0; i < 100 && !memory.users.has("p:enroll:1"); i++) yield* Effect.yieldNow
        assert.isTrue(memory.users.has("p:enroll:1"), "when Redis came back")
        memory.users.delete("p:enroll:1")
        yield* TestClock.adjust("59 seconds")
        assert.isFalse(memory.users.has("p:enroll:1"))
        yield* TestClock.adjust("1 second")
        assert.isTrue(memory.users.has("p:enroll:1"), "a minute later")
      }).pipe(Effect.scoped, Effect.provide(layer))
    }),
  )
})

describe("tokens with Redis users", () => {
  it.live(
    "token create gives an enrollment string: the token, the cluster key and an enroll user that logs in",
    () =>
      Effect.gen(function* () {
        const { prefix } = yield* Test
        const keys = makeKeys(prefix)
        const users = yield* redisUsers
        const clusterKey = Trust.signingKeyOf(Trust.newPrivateKey())!.publicKey
        const created = yield* createToken("laptop", { users, clusterKey })
        const decoded = Trust.decodeEnrollment(created.enrollment!)
        assert.isTrue(decoded._tag === "Success")
        const enrollment = (decoded as { success: Trust.Enrollment }).success
        assert.deepStrictEqual(enrollment, {
          token: created.secret,
          clusterKey,
          redisUser: keys.enrollUser(created.tokenId),
        })
        const password = redisPasswordOf(created.secret)
        assert.strictEqual(
          yield* as(enrollment.redisUser!, password, "RPUSH", keys.uplinkIntake, "a register"),
          "ok",
        )
        assert.strictEqual(
          yield* as(enrollment.redisUser!, password, "XREAD", "STREAMS", keys.reply("n"), "0"),
          "ok",
        )
        assert.strictEqual(
          yield* as(enrollment.redisUser!, password, "XREAD", "STREAMS", keys.peerInbox("p"), "0"),
          "NOPERM",
        )
        // Without Redis users, or without a cluster key.
        const open = yield* createToken("open", { users: undefined, clusterKey })
        assert.notProperty(
          (Trust.decodeEnrollment(open.enrollment!) as { success: Trust.Enrollment }).success,
          "redisUser",
        )
        assert.isUndefined((yield* createToken("keyless", { users, clusterKey: undefined })).enrollment)
      }).pipe(Effect.scoped, Effect.provide(services())),
  )

  it.live(
    "token revoke ends the token's live sessions at once and drops their users; other tokens' stay",
    () =>
      Effect.gen(function* () {
        const users = yield* redisUsers
        const transport = yield* Transport
        const sessions = yield* SessionStore
        const revoked = yield* createToken("revoked", { users, clusterKey: undefined })
        const kept = yield* createToken("kept", { users, clusterKey: undefined })
        const s1 = yield* login("p1", revoked.tokenId)
        const s2 = yield* login("p2", kept.tokenId)
        const p1 = (yield* users.grant("p1", s1))!
        const p2 = (yield* users.grant("p2", s2))!
        const feed = yield* Effect.forkChild(transport.subscribe.pipe(Stream.take(1), Stream.runCollect))
        yield* Effect.sleep(100)

        const outcome = yield* revokeTokens(String(revoked.tokenId), { users })
        assert.deepStrictEqual(outcome.tokenIds, [revoked.tokenId])
        assert.deepStrictEqual(outcome.ended, [{ peerId: "p1", sessionId: s1 }])
        assert.sameMembers([...outcome.droppedUsers], [revoked.redisUser!, p1.user])
        assert.strictEqual(yield* as(p1.user, p1.password, "PING"), "WRONGPASS")
        assert.strictEqual(
          yield* as(revoked.redisUser!, redisPasswordOf(revoked.secret), "PING"),
          "WRONGPASS",
        )
        assert.strictEqual(yield* as(p2.user, p2.password, "PING"), "ok")
        assert.strictEqual(yield* as(kept.redisUser!, redisPasswordOf(kept.secret), "PING"), "ok")
        const store = yield* Store
        assert.strictEqual((yield* store.sessions({ peerId: "p1", limit: 1 }))[0]?.logoutReason, "revoked")
        assert.isNull((yield* store.sessions({ peerId: "p2", limit: 1 }))[0]?.logoutReason ?? null)
        assert.include(Array.from(yield* Fiber.join(feed))[0], '"reason":"revoked"')
        // Its holder, at its next keep-alive, no longer holds it.
        assert.deepStrictEqual(
          yield* sessions.renewLease({
            serverId: "s1",
            leaseMs: 60_000,
            sessions: [{ sessionId: s1, epoch: 1 }],
          }),
          [],
        )
        // A seed peer's token takes its provisioned user with it.
        const seed = yield* addSeedPeer("seed-1", { users })
        yield* revokeTokens(String(seed.tokenId), { users })
        assert.strictEqual(yield* as(seed.redis!.user, seed.redis!.password, "PING"), "WRONGPASS")
        assert.deepStrictEqual((yield* revokeTokens(String(seed.tokenId), { users })).tokenIds, [])
        const tokens = yield* TokenStore
        assert.isNotNull(
          (yield* tokens.listTokens).find((t) => t.tokenId === seed.tokenId)?.revokedAt ?? null,
        )
      }).pipe(Effect.scoped, Effect.provide(services())),
  )
})
