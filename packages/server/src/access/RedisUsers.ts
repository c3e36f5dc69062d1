import type { StoreError } from "@picus/core"
import { Context, Effect, Layer } from "effect"

/** What a Redis user is for (see sql/005_redis_users.sql). */
export type RedisUserKind = "enroll" | "peer" | "provisioned"

/** A Redis user as PostgreSQL keeps it: enough to create it again, and only its password's hash. */
export interface RedisUserRow {
  readonly name: string
  readonly kind: RedisUserKind
  readonly peerId: string | null
  readonly tokenId: number | null
  readonly sessionId: string | null
  /** SHA-256 of the password, in hex. */
  readonly passwordHash: string
}

/**
 * The record of the Redis users the servers manage: Redis forgets them when it restarts, this does
 * not. Every change here comes before the change in Redis (see RedisPeerAccess for why).
 */
export class RedisUserStore extends Context.Service<
  RedisUserStore,
  {
    /**
     * The user of a new session of the peer, replacing the one of its earlier session. False (and
     * nothing written) when the name is a provisioned seed peer's: that one stays.
     */
    readonly grantPeer: (user: {
      readonly name: string
      readonly peerId: string
      readonly sessionId: string
      readonly passwordHash: string
    }) => Effect.Effect<boolean, StoreError>
    /** Forgets a session's user, if the row still names that session; true when it did. */
    readonly releasePeer: (user: {
      readonly name: string
      readonly sessionId: string
    }) => Effect.Effect<boolean, StoreError>
    /** The enroll user of a token (created with it). */
    readonly putEnroll: (user: {
      readonly name: string
      readonly tokenId: number
      readonly passwordHash: string
    }) => Effect.Effect<void, StoreError>
    /** A provisioned seed peer's permanent user (replacing a session's user of the same peer). */
    readonly putProvisioned: (user: {
      readonly name: string
      readonly peerId: string
      readonly tokenId: number
      readonly passwordHash: string
    }) => Effect.Effect<void, StoreError>
    /**
     * Forgets the users of these tokens (enroll, provisioned) and of these sessions; returns their
     * names, to drop them from Redis.
     */
    readonly forgetOf: (of: {
      readonly tokenIds: ReadonlyArray<number>
      readonly sessionIds: ReadonlyArray<string>
    }) => Effect.Effect<ReadonlyArray<string>, StoreError>
    /**
     * Forgets session users whose session is not open, once they are older than `graceMs` (a user
     * is made just before its session's login is written): what a release that failed left.
     */
    readonly forgetClosed: (graceMs: number) => Effect.Effect<ReadonlyArray<string>, StoreError>
    /** Every user, or those of these names. */
    readonly all: Effect.Effect<ReadonlyArray<RedisUserRow>, StoreError>
    readonly byNames: (names: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<RedisUserRow>, StoreError>
  }
>()("@picus/server/RedisUserStore") {}

/**
 * The record in memory. `sessionOpen` says which sessions are open (for `forgetClosed`); by default
 * every one is.
 */
export const makeMemoryRedisUsers = (sessionOpen: (sessionId: string) => boolean = () => true) => {
  const rows = new Map<string, RedisUserRow & { readonly createdAt: number }>()
  const put = (row: RedisUserRow) => rows.set(row.name, { ...row, createdAt: Date.now() })
  return RedisUserStore.of({
    grantPeer: ({ name, peerId, sessionId, passwordHash }) =>
      Effect.sync(() => {
        const current = rows.get(name)
        if (current !== undefined && current.kind !== "peer") return false
        put({ name, kind: "peer", peerId, tokenId: null, sessionId, passwordHash })
        return true
      }),
    releasePeer: ({ name, sessionId }) =>
      Effect.sync(() => {
        const current = rows.get(name)
        if (current?.kind !== "peer" || current.sessionId !== sessionId) return false
        return rows.delete(name)
      }),
    putEnroll: ({ name, tokenId, passwordHash }) =>
      Effect.sync(
        () => void put({ name, kind: "enroll", peerId: null, tokenId, sessionId: null, passwordHash }),
      ),
    putProvisioned: ({ name, peerId, tokenId, passwordHash }) =>
      Effect.sync(
        () => void put({ name, kind: "provisioned", peerId, tokenId, sessionId: null, passwordHash }),
      ),
    forgetOf: ({ tokenIds, sessionIds }) =>
      Effect.sync(() => {
        const gone = [...rows.values()].filter(
          (r) =>
            (r.kind !== "peer" && r.tokenId !== null && tokenIds.includes(r.tokenId)) ||
            (r.sessionId !== null && sessionIds.includes(r.sessionId)),
        )
        for (const r of gone) rows.delete(r.name)
        return gone.map((r) => r.name)
      }),
    forgetClosed: (graceMs) =>
      Effect.sync(() => {
        const gone = [...rows.values()].filter(
          (r) =>
            r.kind === "peer" &&
            r.createdAt < Date.now() - graceMs &&
            (r.sessionId === null || !sessionOpen(r.sessionId)),
        )
        for (const r of gone) rows.delete(r.name)
        return gone.map((r) => r.name)
      }),
    all: Effect.sync(() => [...rows.values()].map(({ createdAt: _createdAt, ...row }) => row)),
    byNames: (names) =>
      Effect.sync(() =>
        names.flatMap((name) => {
          const row = rows.get(name)
          if (row === undefined) return []
          const { createdAt: _createdAt, ...rest } = row
          return [rest]
        }),
      ),
  })
}

export const layerMemoryRedisUsers = (
  sessionOpen?: (sessionId: string) => boolean,
): Layer.Layer<RedisUserStore> => Layer.succeed(RedisUserStore, makeMemoryRedisUsers(sessionOpen))
