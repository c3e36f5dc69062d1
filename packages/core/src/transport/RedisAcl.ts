import { Context, Effect, Layer, Schema } from "effect"
import type { Redis } from "ioredis"
import { describeRedisFailure, openRedisConnection, type RedisTransportOptions } from "./redis.ts"

/** Redis refused to create, drop or list users (the login may lack `+acl`), or is away. */
export class AclError extends Schema.TaggedError<AclError>()("AclError", {
  operation: Schema.String,
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/** A user as the in-memory layer keeps it: what `setUser` was given. */
export interface AclUser {
  readonly passwordHash: string
  readonly rules: ReadonlyArray<string>
}

const SHA256_HEX = /^[0-9a-f]{64}$/

/**
 * Redis users (ACL): created and dropped by the servers for the peers (see keys.ts for the rules).
 * Redis keeps only each password's SHA-256 (`#<hex>`), so the caller passes the hash, never the
 * password. Only users under a name prefix are ever listed: the servers' own user and Redis's
 * `default` are not theirs to touch.
 */
export class RedisAcl extends Context.Service<
  RedisAcl,
  {
    /**
     * Creates the user, or replaces it whole: `reset on #<hash>` then the rules. A replaced user's
     * connections are closed (they logged in with a password that is no longer its).
     */
    readonly setUser: (
      name: string,
      passwordHash: string,
      rules: ReadonlyArray<string>,
    ) => Effect.Effect<void, AclError>
    /** Drops these users, closing their connections; how many there were. */
    readonly deleteUsers: (names: ReadonlyArray<string>) => Effect.Effect<number, AclError>
    /** The names of the users whose name starts with `namePrefix`. */
    readonly users: (namePrefix: string) => Effect.Effect<ReadonlyArray<string>, AclError>
    /** How Redis describes those users (ACL LIST lines: flags, password hashes, rules). */
    readonly list: (namePrefix: string) => Effect.Effect<ReadonlyArray<string>, AclError>
    /**
     * Completes the next time the connection comes back after it was lost: Redis may have
     * restarted, and a restarted Redis has only the users of its ACL file, if any.
     */
    readonly reconnected: Effect.Effect<void>
  }
>()("@picus/core/RedisAcl") {}

const badHash = (operation: string) =>
  new AclError({ operation, message: "a password hash must be 64 lowercase hex digits (SHA-256)" })

/** RedisAcl over a connection of its own, logged in as the servers' user (which needs `+acl`). */
export const makeRedisAcl = Effect.fnUntraced(function* (options: RedisTransportOptions) {
  const client: Redis = yield* openRedisConnection(options).pipe(
    Effect.mapError((e) => new AclError({ operation: e.operation, message: e.message, cause: e })),
  )
  const call = <A>(operation: string, run: () => Promise<A>) =>
    Effect.tryPromise({
      try: run,
      catch: (cause) =>
        new AclError({
          operation,
          message: describeRedisFailure(client, cause),
          cause,
        }),
    })
  let waiters: Array<() => void> = []
  let readyOnce = false
  client.on("ready", () => {
    if (!readyOnce) {
      readyOnce = true
      return
    }
    const woken = waiters
    waiters = []
    for (const wake of woken) wake()
  })

  return RedisAcl.of({
    setUser: (name, passwordHash, rules) =>
      SHA256_HEX.test(passwordHash)
        ? call("acl setuser", async () => {
            // One MULTI: the user is never missing in between, and never half set.
            const replies = await client
              .multi()
              .call("ACL", "DELUSER", name)
              .call("ACL", "SETUSER", name, "reset", "on", `#${passwordHash}`, ...rules)
              .exec()
            for (const [error] of replies ?? []) if (error) throw error
          })
        : Effect.fail(badHash("acl setuser")),
    deleteUsers: (names) =>
      names.length === 0
        ? Effect.succeed(0)
        : call("acl deluser", () => client.call("ACL", "DELUSER", ...names) as Promise<number>),
    users: (namePrefix) =>
      call("acl users", () => client.call("ACL", "USERS") as Promise<Array<string>>).pipe(
        Effect.map((names) => names.filter((name) => name.startsWith(namePrefix))),
      ),
    list: (namePrefix) =>
      call("acl list", () => client.call("ACL", "LIST") as Promise<Array<string>>).pipe(
        Effect.map((lines) => lines.filter((line) => line.startsWith(`user ${namePrefix}`))),
      ),
    reconnected: Effect.callback<void>((resume) => {
      const wake = () => resume(Effect.void)
      waiters.push(wake)
      return Effect.sync(() => {
        waiters = waiters.filter((w) => w !== wake)
      })
    }),
  })
})

export const layerRedisAcl = (options: RedisTransportOptions): Layer.Layer<RedisAcl, AclError> =>
  Layer.effect(RedisAcl, makeRedisAcl(options))

/**
 * RedisAcl in memory: the users as they were set, and a Redis restart to simulate (every user
 * gone, `reconnected` completes).
 */
export const makeMemoryAcl = () => {
  const users = new Map<string, AclUser>()
  let waiters: Array<() => void> = []
  const acl = RedisAcl.of({
    setUser: (name, passwordHash, rules) =>
      SHA256_HEX.test(passwordHash)
        ? Effect.sync(() => void users.set(name, { passwordHash, rules: [...rules] }))
        : Effect.fail(badHash("acl setuser")),
    deleteUsers: (names) =>
      Effect.sync(() => [...new Set(names)].filter((name) => users.delete(name)).length),
    users: (namePrefix) => Effect.sync(() => [...users.keys()].filter((name) => name.startsWith(namePrefix))),
    list: (namePrefix) =>
      Effect.sync(() =>
        [...users]
          .filter(([name]) => name.startsWith(namePrefix))
          .map(([name, u]) => `user ${name} on #${u.passwordHash} ${u.rules.join(" ")}`),
      ),
    reconnected: Effect.callback<void>((resume) => {
      const wake = () => resume(Effect.void)
      waiters.push(wake)
      return Effect.sync(() => {
        waiters = waiters.filter((w) => w !== wake)
      })
    }),
  })
  return {
    acl,
    users,
    /** Redis restarted without its users. */
    restart: Effect.sync(() => {
      users.clear()
      const woken = waiters
      waiters = []
      for (const wake of woken) wake()
    }),
  }
}

export const layerMemoryAcl = (): Layer.Layer<RedisAcl> => Layer.succeed(RedisAcl, makeMemoryAcl().acl)
