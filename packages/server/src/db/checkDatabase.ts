import { Effect, Schema } from "effect"
import { createPool, sql } from "slonik"
import { describeDatabaseFailure, PoolError } from "./pool.ts"
import { databaseTlsOf } from "./tls.ts"

/** The database a read-only command was pointed at does not exist, or has no tables yet. */
export class DatabaseNotReady extends Schema.TaggedError<DatabaseNotReady>()("DatabaseNotReady", {
  database: Schema.String,
  host: Schema.String,
  port: Schema.String,
  message: Schema.String,
}) {}

const MigratedRow = Schema.toStandardSchemaV1(Schema.Struct({ migrated: Schema.Boolean }))
const WHAT_TO_DO = "start the server once, or run `./picus migrate`"

/** PostgreSQL's invalid_catalog_name, somewhere in an error's chain of causes. */
const isMissingDatabase = (error: unknown): boolean => {
  let current = error
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    if ((current as { code?: unknown }).code === "3D000") return true
    current = current.cause
  }
  return false
}

/**
 * Checks, without creating or changing anything, that the database of `databaseUrl` exists and
 * has been migrated: what a read-only command needs before it reads.
 */
export const checkDatabase = (databaseUrl: string): Effect.Effect<void, DatabaseNotReady | PoolError> =>
  Effect.gen(function* () {
    const url = new URL(databaseUrl)
    const where = {
      database: decodeURIComponent(url.pathname.replace(/^\//, "")) || "postgres",
      host: decodeURIComponent(url.hostname) || "localhost",
      port: url.port || "5432",
    }
    const notReady = (what: string) =>
      new DatabaseNotReady({ ...where, message: `database "${where.database}" ${what}: ${WHAT_TO_DO}` })
    const migrated = yield* Effect.tryPromise({
      try: async () => {
        const tls = databaseTlsOf(databaseUrl)
        const pool = await createPool(tls.url, {
          maxPoolSize: 1,
          connectionTimeout: 5_000,
          ...(tls.ssl === undefined ? {} : { ssl: tls.ssl }),
        })
        pool.on("error", () => {})
        try {
          return await pool.oneFirst(
            sql.type(MigratedRow)`select to_regclass('schema_migrations') is not null as migrated`,
          )
        } finally {
          await pool.end()
        }
      },
      catch: (error) =>
        isMissingDatabase(error)
          ? notReady(`does not exist on ${where.host}:${where.port}`)
          : new PoolError({ message: describeDatabaseFailure(error, databaseUrl) }),
    })
    if (!migrated) return yield* notReady(`on ${where.host}:${where.port} has no picus tables`)
  })
