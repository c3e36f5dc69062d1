import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import type { CatalogJob } from "@picus/core"
import { Effect, Result, Schema } from "effect"

/** The catalog shipped with the server: the brief's jobs and a set for common distributions. */
export const defaultCatalogPath: string = fileURLToPath(new URL("../catalog/default.json", import.meta.url))

const CatalogFile = Schema.Struct({
  jobs: Schema.Array(
    Schema.Struct({
      id: Schema.NonEmptyString,
      name: Schema.NonEmptyString,
      os: Schema.NonEmptyString,
      distro: Schema.NonEmptyString,
      command: Schema.NonEmptyString,
      timeout_ms: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThan(0))),
    }),
  ),
})

export class CatalogError extends Schema.TaggedError<CatalogError>()("CatalogError", {
  path: Schema.String,
  message: Schema.String,
}) {}

const DEFAULT_TIMEOUT_MS = 30_000

/** Reads and validates a catalog file (JSON: `{ "jobs": [{ id, name, os, distro, command, timeout_ms? }] }`). */
export const loadCatalog = (path: string): Effect.Effect<ReadonlyArray<CatalogJob>, CatalogError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (e) => new CatalogError({ path, message: e instanceof Error ? e.message : String(e) }),
    })
    const decoded = Schema.decodeUnknownResult(Schema.fromJsonString(CatalogFile))(text)
    if (Result.isFailure(decoded)) {
      return yield* new CatalogError({ path, message: decoded.failure.message })
    }
    const ids = new Set<string>()
    for (const job of decoded.success.jobs) {
      if (ids.has(job.id))
        return yield* new CatalogError({ path, message: `job id "${job.id}" appears twice` })
      ids.add(job.id)
    }
    return decoded.success.jobs.map((job) => ({
      job_id: job.id,
      name: job.name,
      os: job.os,
      distro: job.distro,
      command: job.command,
      timeout_ms: job.timeout_ms ?? DEFAULT_TIMEOUT_MS,
    }))
  })
