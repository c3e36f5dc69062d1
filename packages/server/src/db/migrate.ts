import { createHash } from "node:crypto"
import { readdir, readFile } from "node:fs/promises"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { describeError } from "./pool.ts"

/** The repository's `sql/` folder, where the migrations live. */
export const defaultSqlDir: string = fileURLToPath(new URL("../../../../sql", import.meta.url))

/** The advisory lock every migrator takes (in its transaction) before it looks at the schema. */
export const MIGRATION_LOCK_KEY = 7_313_526_417_001

/** Migrations could not be read, were changed after being applied, or failed to apply. */
export class MigrationError extends Schema.TaggedError<MigrationError>()("MigrationError", {
  message: Schema.String,
}) {}

export interface MigrationFile {
  readonly version: number
  readonly name: string
  readonly checksum: string
  readonly text: string
}

const FILE_NAME = /^(\d+)_(.+)\.sql$/

const NoRow = Schema.toStandardSchemaV1(Schema.Struct({}))
const AppliedRow = Schema.toStandardSchemaV1(
  Schema.Struct({ version: Schema.Int, name: Schema.String, checksum: Schema.String }),
)

const fail = (message: string): never => {
  throw new MigrationError({ message })
}

/** Reads the `NNN_name.sql` files of `dir`, in version order. */
export const readMigrations = (dir: string): Effect.Effect<ReadonlyArray<MigrationFile>, MigrationError> =>
  Effect.tryPromise({
    try: async () => {
      const entries = (await readdir(dir)).filter((entry) => FILE_NAME.test(entry))
      const files = await Promise.all(
        entries.map(async (name): Promise<MigrationFile> => {
          const bytes = await readFile(join(dir, name))
          return {
            version: Number(FILE_NAME.exec(name)![1]),
            name,
            checksum: createHash("sha256").update(bytes).digest("hex"),
            text: bytes.toString("utf8"),
          }
        }),
      )
      files.sort((a, b) => a.version - b.version)
      for (let i = 1; i < files.length; i++) {
        if (files[i]!.version === files[i - 1]!.version) {
          fail(`Migrations ${files[i - 1]!.name} and ${files[i]!.name} have the same version number`)
        }
      }
      return files
    },
    catch: (error) =>
      error instanceof MigrationError
        ? error
        : new MigrationError({ message: `Cannot read migrations from ${dir}: ${describeError(error)}` }),
  })

/**
 * Applies the migrations of `dir` (default: the repository's `sql/`) that are not applied yet, in
 * version order, all in one transaction holding an advisory lock, so concurrent migrators apply each
 * migration once. Refuses to run if an applied migration's file changed or disappeared, or if a new
 * migration is numbered below one already applied.
 */
export const migrate = (
  pool: DatabasePool,
  options: { readonly dir?: string } = {},
): Effect.Effect<{ readonly applied: ReadonlyArray<string> }, MigrationError> =>
  Effect.gen(function* () {
    const dir = options.dir ?? defaultSqlDir
    const files = yield* readMigrations(dir)
    const applied = yield* Effect.tryPromise({
      try: () =>
        pool.transaction(async (tx) => {
          await tx.query(sql.type(NoRow)`select pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`)
          await tx.query(sql.type(NoRow)`
            create table if not exists schema_migrations (
              version     int primary key,
              name        text not null,
              checksum    text not null,
              applied_at  timestamptz not null default now()
            )
          `)
          const done = await tx.any(
            sql.type(AppliedRow)`select version, name, checksum from schema_migrations order by version`,
          )
          const byVersion = new Map(files.map((file) => [file.version, file]))
          for (const row of done) {
            const file = byVersion.get(row.version)
            if (file === undefined) {
              fail(
                `Migration ${row.name} (version ${row.version}) was applied, but its file is missing from ${dir}`,
              )
            } else if (file.name !== row.name) {
              fail(
                `Migration version ${row.version} was applied as ${row.name}, but its file is now ${file.name}`,
              )
            } else if (file.checksum !== row.checksum) {
              fail(
                `Migration ${file.name} has changed since it was applied (checksum ${row.checksum.slice(0, 12)}… is now ${file.checksum.slice(0, 12)}…); add a new migration instead of editing an applied one`,
              )
            }
          }
          const newest = done.at(-1)?.version ?? Number.NEGATIVE_INFINITY
          const appliedVersions = new Set(done.map((row) => row.version))
          const pending = files.filter((file) => !appliedVersions.has(file.version))
          for (const file of pending) {
            if (file.version < newest) {
              fail(
                `Migration ${file.name} is numbered below the newest applied migration (version ${newest})`,
              )
            }
          }
          for (const file of pending) {
            try {
              if (file.text.trim() !== "") {
                // The file may hold many statements, which the extended protocol refuses in one
                // query: hand it over as a parameter and let PL/pgSQL execute it as it stands.
                await tx.query(sql.type(NoRow)`select set_config('picus.migration_sql', ${file.text}, true)`)
                await tx.query(
                  sql.type(
                    NoRow,
                  )`do $migration$ begin execute current_setting('picus.migration_sql'); end $migration$`,
                )
              }
            } catch (error) {
              fail(`Migration ${file.name} failed: ${describeError(error)}`)
            }
            await tx.query(sql.type(NoRow)`
              insert into schema_migrations (version, name, checksum)
              values (${file.version}, ${file.name}, ${file.checksum})
            `)
          }
          return pending.map((file) => file.name)
        }),
      catch: (error) =>
        error instanceof MigrationError
          ? error
          : new MigrationError({ message: `Migrating the database failed: ${describeError(error)}` }),
    })
    return { applied }
  })
