import { LeaseLost, StoreError, TicketState } from "@picus/core"
import { Effect, Schema } from "effect"
import { sql } from "slonik"
import { classifyError, describeError } from "./pool.ts"

// Row schemas. Columns are aliased in SQL to the Store's field names, so the validated row is the
// value the Store returns.
export const std = Schema.toStandardSchemaV1
export const NullableString = Schema.NullOr(Schema.String)
export const NullableInt = Schema.NullOr(Schema.Int)

export const NoRow = std(Schema.Struct({}))
export const TicketFields = {
  ticket: Schema.String,
  peerId: Schema.String,
  sessionId: NullableString,
  jobId: NullableString,
  name: Schema.String,
  os: Schema.String,
  distro: Schema.String,
  command: Schema.String,
  timeoutMs: Schema.Int,
  state: TicketState,
  attempts: Schema.Int,
  deliveredAt: NullableInt,
  createdAt: Schema.optionalKey(Schema.Int),
}
export const TicketRow = std(Schema.Struct(TicketFields))
export const OwnerFields = {
  sessionId: Schema.String,
  ownerId: Schema.String,
  epoch: Schema.Int,
  expired: Schema.Boolean,
}
export const OwnerRow = std(Schema.Struct(OwnerFields))

export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

export const ticketColumns = sql.fragment`
  ticket, peer_id as "peerId", session_id::text as "sessionId", job_id as "jobId", job_name as "name", os,
  distro, command, timeout_ms as "timeoutMs", state, attempts, delivered_at as "deliveredAt",
  created_at as "createdAt"
`
/** Oldest first; ticket ids are numbers in text, so the shorter one is older. */
export const ticketOrder = sql.fragment`created_at, length(ticket), ticket`

/**
 * Whether the session (alias `s`) is lost: no longer held by its owner's current run under a live
 * lease (its owner's lease ran out, or its owner started again since it got the session).
 */
export const ownerLost = (alias: string) =>
  sql.fragment`not exists (
    select 1 from server_instances i
    where i.server_id = ${sql.identifier([alias, "owner_id"])} and i.run = ${sql.identifier([alias, "owner_run"])}
      and i.lease_until >= now()
  )`

/** `now()` plus a lease, as a timestamptz. */
export const leaseEnd = (leaseMs: number) =>
  sql.fragment`now() + ${leaseMs}::float8 * interval '1 millisecond'`

/** A row limit PostgreSQL accepts: NaN and negatives read nothing, Infinity reads everything. */
export const limitOf = (limit: number): number | null =>
  Number.isNaN(limit) ? 0 : limit === Number.POSITIVE_INFINITY ? null : Math.max(0, Math.trunc(limit))

/** Runs a query, mapping any failure to a StoreError naming the operation. */
export const attempt = <A>(operation: string, run: () => Promise<A>): Effect.Effect<A, StoreError> =>
  Effect.tryPromise({
    try: run,
    catch: (error) => storeError(operation, error),
  }).pipe(Effect.withSpan(`PgStore.${operation}`))

/** A failed query as a StoreError that keeps its cause and says whether a retry may help. */
export const storeError = (operation: string, error: unknown) =>
  new StoreError({ operation, message: describeError(error), kind: classifyError(error), cause: error })

/** As `attempt`, for writes fenced by a session's epoch. */
export const fenced = <A>(
  operation: string,
  run: () => Promise<A>,
): Effect.Effect<A, StoreError | LeaseLost> =>
  Effect.tryPromise({
    try: run,
    catch: (error) => (error instanceof Fenced ? new LeaseLost(error.lease) : storeError(operation, error)),
  }).pipe(Effect.withSpan(`PgStore.${operation}`))

/** Thrown inside a transaction to roll it back and fail the call with LeaseLost. */
export class Fenced extends Error {
  readonly lease: { readonly sessionId: string; readonly epoch: number }
  constructor(lease: { readonly sessionId: string; readonly epoch: number }) {
    super("lease lost")
    this.lease = lease
  }
}

const BIGINT_MAX = 9_223_372_036_854_775_807n

/**
 * Which token rows `idOrPrefix` names, for a revoke: a whole number is an id, anything else a
 * prefix. Undefined for an id past bigint, which no row can have.
 */
export const tokenMatch = (idOrPrefix: string) => {
  const byId = /^\d+$/.test(idOrPrefix)
  if (byId && BigInt(idOrPrefix) > BIGINT_MAX) return undefined
  return byId ? sql.fragment`token_id = ${idOrPrefix}::bigint` : sql.fragment`prefix = ${idOrPrefix}`
}
