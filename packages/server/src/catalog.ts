import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { type CatalogJob, Protocol, parseStructured } from "@picus/core"
import { Effect, Predicate, Result, Schema } from "effect"

/** The catalog shipped with the server: the brief's jobs and a set for common distributions. */
export const defaultCatalogPath: string = fileURLToPath(new URL("../catalog/default.json", import.meta.url))

const nonEmpty = Schema.isNonEmpty({ expected: "a non-empty string" })

/**
 * A catalog job: the wire's JobSpec fields (a job is sent as it is written here, so it must be one
 * the wire can carry and the database can hold) and an id. An empty label would match no peer.
 */
const CatalogFileJob = Schema.Struct({
  id: Protocol.Id,
  name: Protocol.JobSpec.fields.name.check(nonEmpty),
  os: Protocol.JobSpec.fields.os.check(nonEmpty),
  distro: Protocol.JobSpec.fields.distro.check(nonEmpty),
  command: Protocol.JobSpec.fields.command,
  timeout_ms: Protocol.JobSpec.fields.timeout_ms,
})

const CatalogFile = Schema.Struct({ jobs: Schema.Array(Schema.Unknown) })

export class CatalogError extends Schema.TaggedError<CatalogError>()("CatalogError", {
  path: Schema.String,
  /** The failing job's position in `jobs` (from 0) and its id, when the error is about one job. */
  index: Schema.optional(Schema.Int),
  jobId: Schema.optional(Schema.String),
  /** The failing field, when there is one. */
  field: Schema.optional(Schema.String),
  message: Schema.String,
}) {}

const DEFAULT_TIMEOUT_MS = 30_000

/** The first failing field, and every failure in one line. */
const issuesOf = (error: Schema.SchemaError) => {
  const issues = Protocol.describeSchemaIssues(error)
  return { field: issues[0]?.field ?? "", message: issues.map((issue) => issue.message).join("; ") }
}

/** How a job is named in an error: its position, and its id when it has a readable one. */
const jobLabel = (index: number, raw: unknown): { readonly label: string; readonly jobId?: string } => {
  const id = Predicate.isObject(raw) && "id" in raw ? raw.id : undefined
  if (!Predicate.isString(id) || id === "") return { label: `job ${index}` }
  const shown = Array.from(id).slice(0, 64).join("")
  return { label: `job ${index} (id ${JSON.stringify(shown)}${shown === id ? "" : "…"})`, jobId: id }
}

/**
 * Reads and validates a catalog file (JSON, or YAML unless it is named *.json:
 * `{ "jobs": [{ id, name, os, distro, command, timeout_ms? }] }`). A syntax error names the file,
 * line and column; a bad job the file, the job (position and id), the field and the limit it breaks.
 */
export const loadCatalog = (path: string): Effect.Effect<ReadonlyArray<CatalogJob>, CatalogError> =>
  Effect.gen(function* () {
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (e) =>
        new CatalogError({ path, message: `catalog ${path}: ${e instanceof Error ? e.message : String(e)}` }),
    })
    const parsed = parseStructured(path, text)
    if (Result.isFailure(parsed)) {
      const { line, column, reason } = parsed.failure
      return yield* new CatalogError({
        path,
        message: `catalog ${path}${line === undefined ? "" : ` line ${line}${column === undefined ? "" : ` column ${column}`}`}: ${reason}`,
      })
    }
    const file = Schema.decodeUnknownResult(CatalogFile)(parsed.success.value)
    if (Result.isFailure(file)) {
      const { field, message } = issuesOf(file.failure)
      return yield* new CatalogError({
        path,
        ...(field === "" ? {} : { field }),
        message: `catalog ${path}: ${field === "" ? `expected an object { "jobs": [...] } (${message.replace(/^: /, "")})` : message}`,
      })
    }
    const decodeJob = Schema.decodeUnknownResult(CatalogFileJob, { errors: "all" })
    const jobs: Array<CatalogJob> = []
    const ids = new Set<string>()
    for (const [index, raw] of file.success.jobs.entries()) {
      const { label, jobId } = jobLabel(index, raw)
      const decoded = decodeJob(raw)
      if (Result.isFailure(decoded)) {
        const { field, message } = issuesOf(decoded.failure)
        return yield* new CatalogError({
          path,
          index,
          ...(jobId === undefined ? {} : { jobId }),
          field,
          message: `catalog ${path}: ${label}: ${message}`,
        })
      }
      const job = decoded.success
      if (ids.has(job.id)) {
        return yield* new CatalogError({
          path,
          index,
          jobId: job.id,
          field: "id",
          message: `catalog ${path}: ${label}: id: appears twice`,
        })
      }
      ids.add(job.id)
      jobs.push({
        job_id: job.id,
        name: job.name,
        os: job.os,
        distro: job.distro,
        command: job.command,
        timeout_ms: job.timeout_ms ?? DEFAULT_TIMEOUT_MS,
      })
    }
    return jobs
  })
