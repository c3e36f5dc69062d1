import { randomBytes } from "node:crypto"
import {
  AclError,
  enrollAclRules,
  type Keys,
  makeKeys,
  peerAclRules,
  RedisAcl,
  redisPasswordHash,
  redisPasswordOf,
  type StoreError,
} from "@picus/core"
import { Effect, Layer } from "effect"
import { AccessError, PeerAccess, type RedisCredentials } from "./PeerAccess.ts"
import { type RedisUserRow, RedisUserStore } from "./RedisUsers.ts"

/**
 * Redis users for peers, kept in PostgreSQL (hashes only) and in Redis. PostgreSQL is the record:
 * every change is written there first, then made in Redis; the reconciler reads Redis first, then
 * PostgreSQL. So a user it finds in Redis but not in PostgreSQL was released (drop it), and one in
 * PostgreSQL but not in Redis is missing (Redis restarted: create it again), whatever runs meanwhile;
 * a user it creates again is checked once more against PostgreSQL, in case a grant or a release of
 * it ran in between.
 */

export interface RedisUsersOptions {
  /** The key prefix: user names and rules derive from it. */
  readonly prefix: string
  /** The database index of the servers' Redis URL (peers select it too). */
  readonly db?: number
}

export interface RedisPeerAccessOptions extends RedisUsersOptions {
  /** How often users are reconciled besides at start and when Redis comes back (default 60 s). */
  readonly reconcileEveryMs?: number
}

/** A session's user whose session is not open this long after it was made is forgotten. */
const SESSION_USER_GRACE_MS = 60_000

const failed = (operation: string) => (e: StoreError | AclError) =>
  new AccessError({
    operation,
    message:
      e instanceof AclError && e.message.startsWith("NOPERM")
        ? `the servers' Redis login may not manage users (${e.message}): give it +acl (see docs/security.md), or set PICUS_REDIS_USERS=off to run open`
        : e.message,
    cause: e,
  })

/** A fresh random password, and the hash Redis and PostgreSQL keep of it. */
const newPassword = () => {
  const password = randomBytes(32).toString("base64url")
  return { password, hash: redisPasswordHash(password) }
}

/** The operations on the peers' Redis users, for the gateway (grant, release) and the CLI. */
export const makeRedisUsers = Effect.fnUntraced(function* (options: RedisUsersOptions) {
  const acl = yield* RedisAcl
  const store = yield* RedisUserStore
  const keys: Keys = makeKeys(options.prefix)
  const ruleOptions = { db: options.db ?? 0 }
  const rulesOf = (row: RedisUserRow) =>
    row.kind === "enroll"
      ? enrollAclRules(keys, ruleOptions)
      : peerAclRules(keys, row.peerId ?? "", ruleOptions)
  /** Only these are the servers' to manage: never their own user, never `default`. */
  const managed = (name: string) =>
    name.startsWith(`${options.prefix}:enroll:`) || name.startsWith(`${options.prefix}:peer:`)

  const grant = (peerId: string, sessionId: string) =>
    Effect.gen(function* () {
      const name = keys.peerUser(peerId)
      const { password, hash } = newPassword()
      // A provisioned seed peer keeps its permanent user: this session gets none of its own.
      if (!(yield* store.grantPeer({ name, peerId, sessionId, passwordHash: hash }))) return undefined
      yield* acl.setUser(name, hash, peerAclRules(keys, peerId, ruleOptions))
      return { user: name, password } satisfies RedisCredentials
    }).pipe(Effect.mapError(failed("grant")))

  const release = (peerId: string, sessionId: string) =>
    Effect.gen(function* () {
      const name = keys.peerUser(peerId)
      if (yield* store.releasePeer({ name, sessionId })) yield* acl.deleteUsers([name])
    }).pipe(
      // What is left is cleaned up by the reconciler.
      Effect.catch((e) =>
        Effect.logWarning(
          `could not drop the Redis user of a session (${e.message}); the reconciler will`,
        ).pipe(Effect.annotateLogs({ peer_id: peerId, session_id: sessionId })),
      ),
    )

  /** Makes Redis's users under the prefix those of PostgreSQL. Returns what it changed. */
  const reconcile = Effect.gen(function* () {
    // Users of sessions no longer open are forgotten first, so they are dropped below as strays
    // (unless granted again meanwhile). Then Redis, then PostgreSQL (see the top of this file).
    yield* store.forgetClosed(SESSION_USER_GRACE_MS)
    const present = new Set((yield* acl.users(`${options.prefix}:`)).filter(managed))
    const rows = yield* store.all
    const known = new Set(rows.map((r) => r.name))
    const missing = rows.filter((r) => !present.has(r.name))
    for (const row of missing) yield* acl.setUser(row.name, row.passwordHash, rulesOf(row))
    const strays = [...present].filter((name) => !known.has(name))
    yield* acl.deleteUsers(strays)
    // A grant or release that ran while a user was being created again wins.
    const now = new Map((yield* store.byNames(missing.map((r) => r.name))).map((r) => [r.name, r]))
    for (const row of missing) {
      const current = now.get(row.name)
      if (current === undefined) yield* acl.deleteUsers([row.name])
      else if (current.passwordHash !== row.passwordHash)
        yield* acl.setUser(current.name, current.passwordHash, rulesOf(current))
    }
    if (missing.length > 0 || strays.length > 0)
      yield* Effect.logInfo(
        `Redis users reconciled: ${missing.length} created again, ${strays.length} dropped`,
      )
    return { created: missing.map((r) => r.name), dropped: strays }
  }).pipe(Effect.mapError(failed("reconcile")))

  /** The enroll user of a new token: its password derives from the token. Returns its name. */
  const createEnrollUser = (tokenId: number, token: string) =>
    Effect.gen(function* () {
      const name = keys.enrollUser(tokenId)
      const hash = redisPasswordHash(redisPasswordOf(token))
      yield* store.putEnroll({ name, tokenId, passwordHash: hash })
      yield* acl.setUser(name, hash, enrollAclRules(keys, ruleOptions))
      return name
    }).pipe(Effect.mapError(failed("create enroll user")))

  /** A provisioned seed peer's permanent user, bound to its token. Its password is shown once. */
  const provisionPeer = (peerId: string, tokenId: number) =>
    Effect.gen(function* () {
      const name = keys.peerUser(peerId)
      const { password, hash } = newPassword()
      yield* store.putProvisioned({ name, peerId, tokenId, passwordHash: hash })
      yield* acl.setUser(name, hash, peerAclRules(keys, peerId, ruleOptions))
      return { user: name, password } satisfies RedisCredentials
    }).pipe(Effect.mapError(failed("provision peer user")))

  /** Drops the users of revoked tokens and of the sessions their revocation ended. */
  const dropUsersOf = (of: {
    readonly tokenIds: ReadonlyArray<number>
    readonly sessionIds: ReadonlyArray<string>
  }) =>
    Effect.gen(function* () {
      const names = yield* store.forgetOf(of)
      yield* acl.deleteUsers(names)
      return names
    }).pipe(Effect.mapError(failed("drop users")))

  return { grant, release, reconcile, createEnrollUser, provisionPeer, dropUsersOf }
})

export type RedisUsers = Effect.Success<ReturnType<typeof makeRedisUsers>>

/**
 * PeerAccess with Redis users. Reconciles once before it is ready (failing, naming the fix, when the
 * servers' login may not manage users), then every `reconcileEveryMs` and whenever the connection
 * to Redis comes back, for as long as the layer lives.
 */
export const layerRedisPeerAccess = (
  options: RedisPeerAccessOptions,
): Layer.Layer<PeerAccess, AccessError, RedisAcl | RedisUserStore> =>
  Layer.effect(
    PeerAccess,
    Effect.gen(function* () {
      const users = yield* makeRedisUsers(options)
      const acl = yield* RedisAcl
      yield* users.reconcile
      const everyMs = options.reconcileEveryMs ?? 60_000
      yield* Effect.gen(function* () {
        yield* Effect.sleep(everyMs).pipe(Effect.raceFirst(acl.reconnected))
        yield* users.reconcile.pipe(Effect.catch((e) => Effect.logWarning(`Redis users: ${e.message}`)))
      }).pipe(Effect.forever, Effect.forkScoped)
      return PeerAccess.of({ grant: users.grant, release: users.release })
    }),
  )
