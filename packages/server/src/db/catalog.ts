import { ANY_PLATFORM, CatalogJob, CatalogStore, type CatalogStoreService } from "@picus/core"
import { Effect } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, NoRow, std } from "./shared.ts"

const CatalogJobRow = std(CatalogJob)

/** Serialises catalog replacements (a transaction-scoped advisory lock). */
const CATALOG_LOCK_KEY = 7_313_526_417_002

/** The CatalogStore over a slonik pool. */
export const makePgCatalog = (pool: DatabasePool): CatalogStoreService => {
  // Reads of a platform's jobs in flight, by platform.
  const reading = new Map<string, Promise<ReadonlyArray<CatalogJob>>>()
  return CatalogStore.of({
    replaceCatalog: (jobs) =>
      attempt("replaceCatalog", () => {
        // One row per job id (the last one given wins), in a stable order.
        const unique = [...new Map(jobs.map((job) => [job.job_id, job])).values()].sort((a, b) =>
          a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : 0,
        )
        return pool.transaction(async (tx) => {
          await tx.query(sql.type(NoRow)`select pg_advisory_xact_lock(${CATALOG_LOCK_KEY})`)
          if (unique.length > 0) {
            await tx.query(sql.type(NoRow)`
              insert into jobs (job_id, name, os, distro, command, timeout_ms)
              select * from ${sql.unnest(
                unique.map((job) => [job.job_id, job.name, job.os, job.distro, job.command, job.timeout_ms]),
                ["text", "text", "text", "text", "text", "int4"],
              )}
              on conflict (job_id) do update set
                name = excluded.name, os = excluded.os, distro = excluded.distro, command = excluded.command,
                timeout_ms = excluded.timeout_ms, enabled = true, updated_at = now()
              where (jobs.name, jobs.os, jobs.distro, jobs.command, jobs.timeout_ms, jobs.enabled)
                is distinct from
                (excluded.name, excluded.os, excluded.distro, excluded.command, excluded.timeout_ms, true)
            `)
          }
          await tx.query(sql.type(NoRow)`
            update jobs set enabled = false, updated_at = now()
            where enabled and not (job_id = any(${sql.array(
              unique.map((job) => job.job_id),
              "text",
            )}))
          `)
        })
      }).pipe(
        // A read that began before this commit is not shared with a session that asks after it.
        Effect.ensuring(Effect.sync(() => reading.clear())),
      ),

    jobsFor: (os, distro) =>
      attempt("jobsFor", () => {
        // Sessions opened together (a storm) share the read of their platform's jobs.
        const key = JSON.stringify([os, distro])
        const shared = reading.get(key)
        if (shared !== undefined) return shared
        const read = pool
          .any(sql.type(CatalogJobRow)`
            select job_id, name, os, distro, command, timeout_ms from jobs
            where enabled and (os = ${ANY_PLATFORM} or os = ${os}) and (distro = ${ANY_PLATFORM} or distro = ${distro})
            order by job_id
          `)
          .finally(() => reading.delete(key))
        reading.set(key, read)
        return read
      }),
  })
}
