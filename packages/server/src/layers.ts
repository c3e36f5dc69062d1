/**
 * The layers a command of the server's works with: the Store (created and migrated, read-only, or
 * `make dev`'s embedded one), the servers' Redis, and who may use Redis as which peer.
 */
import { layerRedisAcl, type Stores, TransportRedis, UsageError } from "@picus/core"
import { Effect, Layer } from "effect"
import { OPEN_MODE_WARNING, PeerAccess } from "./access/PeerAccess.ts"
import { layerRedisPeerAccess, makeRedisUsers, type RedisUsers } from "./access/RedisPeerAccess.ts"
import type { RedisUserStore } from "./access/RedisUsers.ts"
import { CatalogError } from "./catalog.ts"
import { ServerIdInUse } from "./claimServerId.ts"
import { ClusterKeyError } from "./clusterKey.ts"
import { ConfigError, type ServerConfig } from "./config.ts"
import { connectEmbedded, defaultDataDir, EMBEDDED_POOL_OPTIONS } from "./db/embedded.ts"
import { ensureDatabase } from "./db/ensureDatabase.ts"
import { PgStore } from "./db/PgStore.ts"
import { InvalidJob } from "./submit.ts"

export const storeLayer = (config: ServerConfig) =>
  Layer.unwrap(ensureDatabase(config.databaseUrl).pipe(Effect.as(PgStore.layer(config.databaseUrl))))

/** The servers' Redis: URL, prefix and TLS, for the transport and the Redis users. */
export const redisOf = (config: ServerConfig) => ({
  url: config.redisUrl,
  prefix: config.redisPrefix,
  ...(config.redisTls === undefined ? {} : { tls: config.redisTls }),
})
export const transportLayer = (config: ServerConfig) => TransportRedis.layerRedis(redisOf(config))

/** The database index of a Redis URL (peers select the same one). */
export const redisDbOf = (url: string): number => {
  try {
    return Number(new URL(url).pathname.slice(1)) || 0
  } catch {
    return 0
  }
}

/**
 * Who may use Redis as which peer: with Redis users (the default), each peer its own, reconciled
 * with PostgreSQL while the server runs; off, nobody (said loudly).
 */
export const peerAccessLayer = (config: ServerConfig): Layer.Layer<PeerAccess, unknown, RedisUserStore> =>
  config.redisUsers
    ? layerRedisPeerAccess({ prefix: config.redisPrefix, db: redisDbOf(config.redisUrl) }).pipe(
        Layer.provide(layerRedisAcl(redisOf(config))),
      )
    : Layer.merge(
        PeerAccess.layerOpen,
        Layer.effectDiscard(Effect.logWarning(`${OPEN_MODE_WARNING} (PICUS_REDIS_USERS=off)`)),
      )

/** Runs `body` with the Redis users' operations when the servers use them, else with undefined. */
export const withRedisUsers = <A, E, R>(
  config: ServerConfig,
  body: (users: RedisUsers | undefined) => Effect.Effect<A, E, R>,
) =>
  config.redisUsers
    ? makeRedisUsers({ prefix: config.redisPrefix, db: redisDbOf(config.redisUrl) }).pipe(
        Effect.flatMap(body),
        Effect.provide(layerRedisAcl(redisOf(config))),
      )
    : body(undefined)

/** A Redis URL for a login, without the servers' own (user names have colons: encoded). */
export const redisUrlFor = (url: string, user: string, password: string): string => {
  const parsed = new URL(url)
  parsed.username = encodeURIComponent(user)
  parsed.password = encodeURIComponent(password)
  return parsed.toString()
}

/**
 * The Store of a read-only command: the database must exist and be migrated already, and is
 * neither created nor migrated (a mistyped name must not leave a new database behind).
 */
export const readOnlyStoreLayer = (config: ServerConfig) =>
  PgStore.layer(config.databaseUrl, { requireMigrated: true, maxPoolSize: 2 })

/**
 * The Store a command works on: the configured database (created and migrated when needed, unless
 * `readOnly`: then it must exist and be migrated already), or `make dev`'s embedded one.
 */
export const withStore = <A, E>(
  config: ServerConfig,
  body: Effect.Effect<A, E, Stores | RedisUserStore>,
  embedded = false,
  readOnly = false,
) =>
  body.pipe(
    Effect.provide(
      embedded
        ? Layer.unwrap(
            connectEmbedded(process.env.PICUS_DATA_DIR ?? defaultDataDir).pipe(
              Effect.map((url) => PgStore.layer(url, EMBEDDED_POOL_OPTIONS)),
            ),
          )
        : readOnly
          ? readOnlyStoreLayer(config)
          : storeLayer(config),
    ),
  )

/** A mistake in what the user asked for (flags, arguments, a catalog file), not a failure while doing it. */
export const isUsageError = (failure: unknown): boolean =>
  failure instanceof UsageError ||
  failure instanceof ConfigError ||
  failure instanceof ClusterKeyError ||
  failure instanceof InvalidJob ||
  failure instanceof CatalogError ||
  failure instanceof ServerIdInUse

/**
 * The Store of a command that works on a cluster already set up (run, submit, cancel): the database
 * must exist and be migrated (the servers do that); it is neither created nor migrated, which also
 * spares every such command the migrations' lock and checks.
 */
export const withExistingStore = <A, E>(
  config: ServerConfig,
  body: Effect.Effect<A, E, Stores | RedisUserStore>,
) => withStore(config, body, false, true)
