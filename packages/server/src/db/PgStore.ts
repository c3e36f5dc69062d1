import {
  composeStore,
  layerStores,
  type StoreParts,
  type StoreService,
  type Stores,
  storesContext,
} from "@picus/core"
import { Context, Effect, Layer } from "effect"
import type { DatabasePool } from "slonik"
import { RedisUserStore } from "../access/RedisUsers.ts"
import { makePgCatalog } from "./catalog.ts"
import { checkMigrated, type DatabaseNotReady, missingAsNotReady } from "./checkDatabase.ts"
import { type MigrationError, migrate } from "./migrate.ts"
import { makePgOperatorTokens } from "./operatorTokens.ts"
import { makePool, type PoolError, type PoolOptions } from "./pool.ts"
import { makePgRedisUsers } from "./redisUsers.ts"
import { makePgReports } from "./reports.ts"
import { makePgResults } from "./results.ts"
import { makePgRetention } from "./retention.ts"
import { makePgRuns } from "./runs.ts"
import { makePgSessions } from "./sessions.ts"
import { makePgTickets } from "./tickets.ts"
import { makePgTokens } from "./tokens.ts"

/** Every domain's store over one slonik pool. */
export const makePgStores = (pool: DatabasePool): StoreParts => ({
  tokens: makePgTokens(pool),
  catalog: makePgCatalog(pool),
  sessions: makePgSessions(pool),
  tickets: makePgTickets(pool),
  results: makePgResults(pool),
  reports: makePgReports(pool),
  retention: makePgRetention(pool),
  runs: makePgRuns(pool),
  operatorTokens: makePgOperatorTokens(pool),
})

/** The whole Store over a slonik pool. */
export const makePgStore = (pool: DatabasePool): StoreService => composeStore(makePgStores(pool))

/** The Store and every narrow store over an existing pool (whose lifetime the caller manages). */
export const layerPg = (pool: DatabasePool): Layer.Layer<Stores> => layerStores(makePgStores(pool))

export interface PgStoreOptions extends PoolOptions {
  /** Apply pending migrations before serving (default true). */
  readonly migrate?: boolean
  /** Where the migrations are (default: the repository's `sql/`). */
  readonly migrationsDir?: string
  /** Without migrating: fail with DatabaseNotReady unless the database exists and is migrated. */
  readonly requireMigrated?: boolean
}

/**
 * Opens a pool to `databaseUrl` (closed with the layer), migrates it, and provides the Store and
 * every narrow store over it, and the record of the Redis users.
 */
export const layer = (
  databaseUrl: string,
  options: PgStoreOptions = {},
): Layer.Layer<Stores | RedisUserStore, PoolError | MigrationError | DatabaseNotReady> =>
  Layer.effectContext(
    Effect.gen(function* () {
      const pool = yield* makePool(databaseUrl, options).pipe(
        Effect.mapError((error) =>
          options.requireMigrated === true ? missingAsNotReady(error, databaseUrl) : error,
        ),
      )
      if (options.requireMigrated === true) yield* checkMigrated(pool, databaseUrl)
      else if (options.migrate !== false) {
        yield* migrate(pool, options.migrationsDir === undefined ? {} : { dir: options.migrationsDir })
      }
      return Context.add(storesContext(makePgStores(pool)), RedisUserStore, makePgRedisUsers(pool))
    }),
  )

export const PgStore = { make: makePgStore, makeStores: makePgStores, layerPg, layer } as const
