import { randomBytes } from "node:crypto"
import { createPool, type DatabasePool, sql } from "slonik"

/** The URL of the maintenance database tests create their databases through. */
export const adminUrl = (): string => {
  const fromEnv = process.env.DATABASE_URL
  if (fromEnv === undefined || fromEnv === "") return "postgres://postgres@127.0.0.1:5432/postgres"
  const url = new URL(fromEnv)
  url.pathname = "/postgres"
  return url.toString()
}

/** `url` with its database name replaced. */
export const withDatabase = (url: string, database: string): string => {
  const out = new URL(url)
  out.pathname = `/${database}`
  return out.toString()
}

const withAdmin = async <A>(run: (pool: DatabasePool) => Promise<A>): Promise<A> => {
  const pool = await createPool(adminUrl(), {
    maxPoolSize: 1,
    connectionTimeout: 5_000,
    statementTimeout: 30_000,
  })
  try {
    return await run(pool)
  } finally {
    await pool.end()
  }
}

export interface FreshDatabase {
  /** Connection URL of the new, empty database. */
  readonly url: string
  readonly name: string
  /** Drops the database, closing any connection still open to it. */
  readonly drop: () => Promise<void>
}

/** Creates an empty database `picus_test_<random>` of the tests' own. */
export const freshDatabase = async (): Promise<FreshDatabase> => {
  const name = `picus_test_${randomBytes(6).toString("hex")}`
  await withAdmin((pool) => pool.query(sql.unsafe`create database ${sql.identifier([name])}`))
  let dropped = false
  return {
    name,
    url: withDatabase(adminUrl(), name),
    drop: async () => {
      if (dropped) return
      dropped = true
      await withAdmin((pool) =>
        pool.query(sql.unsafe`drop database if exists ${sql.identifier([name])} with (force)`),
      )
    },
  }
}
