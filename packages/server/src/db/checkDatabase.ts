import { Effect, Schema } from "effect"
import { type CommonQueryMethods, sql } from "slonik"
import { describeDatabaseFailure, PoolError } from "./pool.ts"

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
export const isMissingDatabase = (error: unknown): boolean => {
  let current = error
  for (let depth = 0; depth < 4 && current instanceof Error; depth++) {
    if ((current as { code?: unknown }).code === "3D000") return true
    current = current.cause
  }
  return false
}

/** Where a database URL points, for messages. */
const whereOf = (databaseUrl: string) => {
  const url = new URL(databaseUrl)
  return {
    database: decodeURIComponent(url.pathname.replace(/^\//, "")) || "postgres",
    host: decodeURIComponent(url.hostname) || "localhost",
    port: url.port || "5432",
  }
}

/** A pool that could not be made because its database does not exist, told as DatabaseNotReady. */
export const missingAsNotReady = (error: PoolError, databaseUrl: string): DatabaseNotReady | PoolError => {
  if (!isMissingDatabase(error.cause)) return error
  const where = whereOf(databaseUrl)
  return new DatabaseNotReady({
    ...where,
    message: `database "${where.database}" does not exist on ${where.host}:${where.port}: ${WHAT_TO_DO}`,
  })
}

/**
 * Checks, without creating or changing anything, that the database of `databaseUrl` exists and
 * has been migrated, over `pool` (a pool of that database: its first query connects): what a
 * command needs that works on a database the servers set up.
 */
export const checkMigrated = (
  pool: CommonQueryMethods,
  databaseUrl: string,
): Effect.Effect<void, DatabaseNotReady | PoolError> =>
  Effect.gen(function* () {
    const where = whereOf(databaseUrl)
    const notReady = (what: string) =>
      new DatabaseNotReady({ ...where, message: `database "${where.database}" ${what}: ${WHAT_TO_DO}` })
    const migrated = yield* Effect.tryPromise({
      try: () =>
        pool.oneFirst(sql.type(MigratedRow)`select to_regclass('schema_migrations') is not null as migrated`),
      catch: (error) =>
        isMissingDatabase(error)
          ? notReady(`does not exist on ${where.host}:${where.port}`)
          : new PoolError({ message: describeDatabaseFailure(error, databaseUrl) }),
    })
    if (!migrated) return yield* notReady(`on ${where.host}:${where.port} has no picus tables`)
  })
