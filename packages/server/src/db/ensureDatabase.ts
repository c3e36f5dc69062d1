import { Effect, Schema } from "effect"
import { createPool, sql } from "slonik"
import { describeDatabaseFailure, PoolError } from "./pool.ts"
import { databaseTlsOf } from "./tls.ts"

const NoRow = Schema.toStandardSchemaV1(Schema.Struct({}))

/**
 * Creates the database named in the URL when it does not exist yet, through the server's
 * `postgres` maintenance database, so that a first start on a fresh PostgreSQL just works.
 */
export const ensureDatabase = (databaseUrl: string): Effect.Effect<void, PoolError> =>
  Effect.tryPromise({
    try: async () => {
      const url = new URL(databaseUrl)
      const name = decodeURIComponent(url.pathname.replace(/^\//, ""))
      if (name === "" || name === "postgres") return
      url.pathname = "/postgres"
      const tls = databaseTlsOf(url.toString())
      const pool = await createPool(tls.url, {
        maxPoolSize: 1,
        connectionTimeout: 5_000,
        ...(tls.ssl === undefined ? {} : { ssl: tls.ssl }),
      })
      pool.on("error", () => {})
      try {
        const exists = await pool.exists(sql.type(NoRow)`select 1 from pg_database where datname = ${name}`)
        if (!exists) {
          await pool
            .query(sql.type(NoRow)`create database ${sql.identifier([name])}`)
            .catch((error: unknown) => {
              // Another instance created it at the same moment.
              if (!String(error).includes("already exists")) throw error
            })
        }
      } finally {
        await pool.end()
      }
    },
    // Named after the database meant, not the maintenance one it is created through.
    catch: (error) => new PoolError({ message: describeDatabaseFailure(error, databaseUrl) }),
  })
