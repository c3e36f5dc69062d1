import { randomBytes } from "node:crypto"
import { createPool, sql } from "slonik"
import { afterAll, describe, expect, it } from "vitest"
import { runPicus } from "../../../e2e/support/processes.ts"
import { adminUrl, type FreshDatabase, freshDatabase, withDatabase } from "./support/database.ts"

// The read-only commands as a user runs them, against the shared PostgreSQL: they read what is
// there and never create a database or tables.

const databaseExists = async (name: string) => {
  const pool = await createPool(adminUrl(), { maxPoolSize: 1 })
  try {
    return await pool.exists(sql.unsafe`select 1 from pg_database where datname = ${name}`)
  } finally {
    await pool.end()
  }
}

const tableExists = async (url: string, table: string) => {
  const pool = await createPool(url, { maxPoolSize: 1 })
  try {
    return await pool.oneFirst(sql.unsafe`select to_regclass(${table}) is not null as present`)
  } finally {
    await pool.end()
  }
}

const readOnly = [["sessions"], ["results"], ["token", "list"]] as const
const server = (args: ReadonlyArray<string>, databaseUrl: string) =>
  runPicus(args, { DATABASE_URL: databaseUrl })

const databases: Array<FreshDatabase> = []
afterAll(async () => {
  for (const db of databases) await db.drop()
})

describe("read-only commands", () => {
  it.each(readOnly.map((args) => [args.join(" "), args] as const))(
    "%s: a database that does not exist is named, with what to do, and is not created",
    async (_, args) => {
      const name = `picus_missing_${randomBytes(6).toString("hex")}`
      const url = withDatabase(adminUrl(), name)
      const { hostname, port } = new URL(url)
      const run = await server(args, url)
      expect(run.code, run.output).toBe(1)
      expect(run.output).toContain(`database "${name}" does not exist on ${hostname}:${port}`)
      expect(run.output).toMatch(/start the server once, or run .*migrate/)
      expect(await databaseExists(name), "it was not created").toBe(false)
    },
    30_000,
  )

  it("an empty database is not migrated: the command says what to do", async () => {
    const db = await freshDatabase()
    databases.push(db)
    const run = await server(["sessions"], db.url)
    expect(run.code, run.output).toBe(1)
    expect(run.output).toContain(`database "${db.name}"`)
    expect(run.output).toMatch(/no picus tables.*start the server once, or run .*migrate/)
    expect(await tableExists(db.url, "schema_migrations"), "no table was created").toBe(false)

    const migrated = await server(["migrate"], db.url)
    expect(migrated.code, migrated.output).toBe(0)
    for (const args of readOnly) {
      const read = await server([...args, "--json"], db.url)
      expect(read.code, read.output).toBe(0)
      expect(JSON.parse(read.stdout)).toEqual([])
    }
  }, 60_000)
})
