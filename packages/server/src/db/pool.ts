import type { StoreFailureKind } from "@picus/core"
import { Effect, Schema, type Scope } from "effect"
import {
  BackendTerminatedError,
  BackendTerminatedUnexpectedlyError,
  ConnectionError,
  createDateTypeParser,
  createIntervalTypeParser,
  createNumericTypeParser,
  createPool,
  createTimestampTypeParser,
  type DatabasePool,
  type DriverTypeParser,
  IdleTransactionTimeoutError,
  type Interceptor,
  type QueryContext,
  type QueryResultRow,
  StatementTimeoutError,
} from "slonik"
import { statementCounter } from "./statementCounter.ts"
import { databaseTlsOf } from "./tls.ts"

/** The database could not be reached, or refused the pool's configuration. */
export class PoolError extends Schema.TaggedError<PoolError>()("PoolError", {
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/** A row that does not fit the schema its query was typed with (`sql.type(schema)`). */
export class RowValidationError extends Error {
  override readonly name = "RowValidationError"
  /** The query's SQL text (never its values, which may hold secrets). */
  readonly sql: string
  readonly issues: ReadonlyArray<{ readonly path: string; readonly message: string }>

  constructor(sql: string, issues: ReadonlyArray<{ readonly path: string; readonly message: string }>) {
    const described = issues.map((issue) =>
      issue.path === "" ? issue.message : `${issue.path}: ${issue.message}`,
    )
    super(`A row of query "${abbreviateSql(sql)}" does not fit its schema: ${described.join("; ")}`)
    this.sql = sql
    this.issues = issues
  }
}

export interface PoolOptions {
  /** Most connections the pool opens (default 10). */
  readonly maxPoolSize?: number
  /** How long to wait for a connection to be established, in ms (default 5 000). */
  readonly connectionTimeoutMs?: number
  /** A connection idle for this long is closed, in ms (default 300 000). */
  readonly idleTimeoutMs?: number
  /** The server aborts any statement running longer than this, in ms (default 30 000). */
  readonly statementTimeoutMs?: number
  /** The server ends a session idle inside a transaction for longer than this, in ms (default 60 000). */
  readonly idleInTransactionSessionTimeoutMs?: number
  /** Extra interceptors, run after row validation. */
  readonly interceptors?: ReadonlyArray<Interceptor>
}

/** Collapses whitespace and cuts a query's SQL to a length fit for an error message. */
export const abbreviateSql = (sql: string, max = 160): string => {
  const flat = sql.replace(/\s+/g, " ").trim()
  return flat.length > max ? `${flat.slice(0, max - 1)}…` : flat
}

type StandardIssue = {
  readonly message: string
  readonly path?: ReadonlyArray<PropertyKey | { readonly key: PropertyKey }> | undefined
}

const pathOf = (issue: StandardIssue): string =>
  (issue.path ?? []).map((segment) => String(typeof segment === "object" ? segment.key : segment)).join(".")

type RowDecoder = (row: unknown) => QueryResultRow

/**
 * The synchronous decoder of an Effect schema, made once per schema: the standard adapter's
 * `validate` runs a fiber per row, two to three times the decoder's cost (docs/performance.md).
 */
const decoders = new WeakMap<object, RowDecoder>()
const decoderOf = (parser: object): RowDecoder | undefined => {
  if (!Schema.isSchema(parser)) return undefined
  let decode = decoders.get(parser)
  if (decode === undefined) {
    decode = Schema.decodeUnknownSync(parser as Schema.Decoder<QueryResultRow>) as RowDecoder
    decoders.set(parser, decode)
  }
  return decode
}

/**
 * Validates every row against the schema of its query (`sql.type(schema)`) and replaces it by the
 * schema's output. Slonik 49 hands the schema to interceptors but does not validate by itself.
 */
export const rowValidationInterceptor: Interceptor = {
  name: "picus/row-validation",
  transformRowAsync: async (context: QueryContext, _query, row) => {
    const parser = context.resultParser
    if (parser === undefined) return row
    const decode = decoderOf(parser)
    if (decode !== undefined) {
      try {
        return decode(row)
      } catch {
        // A row that does not fit: the standard adapter below names its issues.
      }
    }
    const result = await parser["~standard"].validate(row)
    if (result.issues !== undefined) {
      throw new RowValidationError(
        context.originalQuery.sql,
        result.issues.map((issue) => ({ path: pathOf(issue), message: issue.message })),
      )
    }
    return result.value as QueryResultRow
  },
}

const TIMESTAMPTZ =
  /^(\d{4,})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2})(?::?(\d{2}))?(?::?(\d{2}))?)( BC)?$/

/**
 * Parses PostgreSQL's ISO `timestamptz` text into epoch milliseconds, truncating microseconds
 * (as `date_trunc('milliseconds', …)` does). ±infinity become ±Infinity.
 */
export const parseTimestamptz = (value: string): number => {
  if (value === "infinity") return Number.POSITIVE_INFINITY
  if (value === "-infinity") return Number.NEGATIVE_INFINITY
  const m = TIMESTAMPTZ.exec(value)
  if (m === null) throw new Error(`Unexpected timestamptz text "${value}" (is DateStyle ISO?)`)
  const [, y, mo, d, h, mi, s, frac, zulu, sign, oh, om, os, bc] = m
  const year = bc === undefined ? Number(y) : 1 - Number(y)
  const date = new Date(0)
  date.setUTCFullYear(year, Number(mo) - 1, Number(d))
  date.setUTCHours(Number(h), Number(mi), Number(s), Number(`${frac ?? ""}000`.slice(0, 3)))
  const offsetSeconds =
    zulu !== undefined || sign === undefined
      ? 0
      : (sign === "-" ? -1 : 1) * (Number(oh) * 3600 + Number(om ?? 0) * 60 + Number(os ?? 0))
  return date.getTime() - offsetSeconds * 1000
}

/** Parses `int8` text into a number, refusing values a number cannot hold exactly. */
export const parseInt8 = (value: string): number => {
  const n = Number(value)
  if (!Number.isSafeInteger(n)) throw new Error(`int8 value ${value} does not fit in a JavaScript number`)
  return n
}

/** Slonik's type parsers, except that `int8` becomes a number and `timestamptz` epoch milliseconds. */
export const typeParsers: ReadonlyArray<DriverTypeParser> = [
  { name: "int8", parse: parseInt8 },
  { name: "timestamptz", parse: parseTimestamptz },
  createDateTypeParser(),
  createIntervalTypeParser(),
  createNumericTypeParser(),
  createTimestampTypeParser(),
]

/** Removes the password (and the URL that carries it) from a message. */
export const redact = (message: string, databaseUrl: string): string => {
  let out = message.split(databaseUrl).join("<database url>")
  try {
    const password = decodeURIComponent(new URL(databaseUrl).password)
    if (password.length > 0) out = out.split(password).join("***")
  } catch {
    // Not a URL we can read a password from; nothing more to hide.
  }
  return out
}

const UNAVAILABLE_ERRNO = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
])

/** What a SQLSTATE's class says of retrying: https://www.postgresql.org/docs/current/errcodes-appendix.html */
const kindOfSqlState = (code: string): StoreFailureKind | undefined => {
  switch (code.slice(0, 2)) {
    case "08": // connection exception
    case "53": // insufficient resources
    case "57": // operator intervention: shutting down, cancelled
    case "40": // transaction rollback: deadlock, serialization
    case "58": // system error (I/O)
      return "unavailable"
    case "22": // data exception: a value the column cannot hold
    case "23": // integrity constraint violation
    case "42": // syntax error or access rule violation
    case "P0": // raised by a PL/pgSQL function or trigger
    case "2B":
    case "27":
    case "44":
      return "rejected"
    default:
      return undefined
  }
}

/**
 * Whether a failed query may succeed if tried again, from the error's class and its causes' codes
 * (SQLSTATE, errno), never from its message text.
 */
export const classifyError = (error: unknown): StoreFailureKind => {
  let current: unknown = error
  for (let depth = 0; depth < 6 && current !== undefined && current !== null; depth++) {
    if (
      current instanceof ConnectionError ||
      current instanceof BackendTerminatedError ||
      current instanceof BackendTerminatedUnexpectedlyError ||
      current instanceof StatementTimeoutError ||
      current instanceof IdleTransactionTimeoutError
    )
      return "unavailable"
    if (current instanceof RowValidationError) return "rejected"
    const code = (current as { readonly code?: unknown }).code
    if (typeof code === "string") {
      if (UNAVAILABLE_ERRNO.has(code)) return "unavailable"
      if (/^[0-9A-Z]{5}$/.test(code)) {
        const kind = kindOfSqlState(code)
        if (kind !== undefined) return kind
      }
    }
    current = current instanceof Error ? current.cause : undefined
  }
  return "unknown"
}

/** Where the database URL is set, for every program of the project. */
export const DATABASE_HINT = "set DATABASE_URL or --database-url"

const SOCKET_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
}

/** The first code (errno or SQLSTATE) in an error's chain of causes, with the error carrying it. */
const codeOf = (error: unknown): { readonly code: string; readonly error: unknown } | undefined => {
  let current = error
  for (let depth = 0; depth < 6 && current instanceof Error; depth++) {
    const code = (current as { readonly code?: unknown }).code
    if (typeof code === "string") return { code, error: current }
    current = current.cause
  }
  return undefined
}

/** host:port and database of a PostgreSQL URL, without credentials. */
export const databaseWhere = (databaseUrl: string) => {
  try {
    const url = new URL(databaseUrl)
    return {
      address: `${decodeURIComponent(url.hostname) || "localhost"}:${url.port || "5432"}`,
      database: decodeURIComponent(url.pathname.replace(/^\//, "")) || "postgres",
      user: decodeURIComponent(url.username) || "postgres",
    }
  } catch {
    return { address: "(an unreadable database URL)", database: "?", user: "?" }
  }
}

/**
 * Why PostgreSQL could not be used, as one line that names the server, the database and what to
 * set: unreachable (with the socket's reason), a refused login, a missing database, or else what
 * PostgreSQL said. `database` names the database meant when the URL is the maintenance one.
 */
export const describeDatabaseFailure = (error: unknown, databaseUrl: string, database?: string): string => {
  const where = databaseWhere(databaseUrl)
  const name = database ?? where.database
  const found = codeOf(error)
  const said = redact(found?.error instanceof Error ? found.error.message : describeError(error), databaseUrl)
  const code = found?.code ?? ""
  if (SOCKET_REASONS[code] !== undefined || /timed? ?out/i.test(said))
    return `cannot reach PostgreSQL at ${where.address}, database ${name} (${SOCKET_REASONS[code] ?? "timed out"}); ${DATABASE_HINT}`
  // invalid_authorization_specification (no such role, pg_hba refused) and invalid_password.
  if (code === "28000" || code === "28P01")
    return `PostgreSQL at ${where.address} refused user ${where.user} for database ${name} (${said}); ${DATABASE_HINT}`
  if (code === "3D000")
    return `database ${name} does not exist on PostgreSQL at ${where.address}; ${DATABASE_HINT}`
  return `PostgreSQL at ${where.address}, database ${name}: ${describeError(error, databaseUrl)}`
}

/** The message of an error and of its causes, without secrets. */
export const describeError = (error: unknown, databaseUrl?: string): string => {
  const parts: Array<string> = []
  let current: unknown = error
  for (let depth = 0; depth < 4 && current !== undefined && current !== null; depth++) {
    const message = current instanceof Error ? current.message : String(current)
    if (message !== "" && !parts.some((part) => part.includes(message))) parts.push(message)
    current = current instanceof Error ? current.cause : undefined
  }
  const text = parts.length > 0 ? parts.join(": ") : "unknown error"
  return databaseUrl === undefined ? text : redact(text, databaseUrl)
}

/**
 * A slonik pool, ended when the scope closes. Every `sql.type(schema)` row is validated; `int8`
 * comes back as a number and `timestamptz` as epoch milliseconds. Fails (rather than hangs) when
 * the database cannot be reached.
 */
export const makePool = (
  databaseUrl: string,
  options: PoolOptions = {},
): Effect.Effect<DatabasePool, PoolError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const tls = databaseTlsOf(databaseUrl)
        const pool = await createPool(tls.url, {
          ...(tls.ssl === undefined ? {} : { ssl: tls.ssl }),
          maxPoolSize: options.maxPoolSize ?? 10,
          connectionTimeout: options.connectionTimeoutMs ?? 5_000,
          // Slonik closes a connection idle for 10 s; the next statement then pays a connection and
          // the planning of its prepared statement again. A server's load comes in bursts.
          idleTimeout: options.idleTimeoutMs ?? 300_000,
          statementTimeout: options.statementTimeoutMs ?? 30_000,
          idleInTransactionSessionTimeout: options.idleInTransactionSessionTimeoutMs ?? 60_000,
          // Counted into the process's metrics (db/statementCounter.ts).
          interceptors: [rowValidationInterceptor, statementCounter, ...(options.interceptors ?? [])],
          typeParsers,
          // Slonik's default runs DISCARD ALL each time a connection goes back to the pool: one more
          // round trip (and commit) per query. Nothing here leaves session state behind (no SET, no
          // temporary tables) but the named prepared statements of the hot path (`sql.prepared`),
          // which are meant to outlive the query: planned once per connection, not at every call.
          resetConnection: async () => {},
        })
        // Query errors reach their callers through the rejected promise; without a listener the
        // pool's "error" event would throw them a second time.
        pool.on("error", () => {})
        return pool
      },
      catch: (error) =>
        new PoolError({
          message: describeDatabaseFailure(error, databaseUrl),
          cause: error,
        }),
    }),
    (pool) => Effect.tryPromise(() => pool.end()).pipe(Effect.ignore),
  )
