/**
 * The JSON API under `/api/`: what the operator's command line reads and does, for the dashboard
 * and scripts. Every route asks for `Authorization: Bearer <operator token>`: a `read` token reads,
 * an `admin` token also submits and cancels runs and tickets. Inputs are decoded with schemas; a bad one is a 400 naming
 * the field. The output's fields are snake_case, as the wire's and `--json`'s are.
 */
import {
  type CancelOutcome,
  type LogRow,
  NoMatchingPeers,
  type OperatorScope,
  type OperatorTokenInfo,
  type OperatorTokenStore,
  type PeerView,
  Protocol,
  ReportStore,
  type RunAmount,
  type RunInfo,
  RunStore,
  type SessionRow,
  type StoreError,
  type TicketStore,
  type TicketView,
  Transport,
} from "@picus/core"
import { Duration, Effect, Option, Schedule, Schema, Stream } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { cancelRun, cancelTickets } from "../cancel.ts"
import { authenticateOperator } from "../operatorTokens.ts"
import { startRun } from "../runs.ts"
import { InvalidJob } from "../submit.ts"

/** A failure the API answers with a status and a JSON `{ error, field? }`. */
export class ApiFailure extends Schema.TaggedError<ApiFailure>()("ApiFailure", {
  status: Schema.Int,
  error: Schema.String,
  field: Schema.optional(Schema.String),
}) {}

const failure = (status: number, error: string, field?: string) =>
  HttpServerResponse.jsonUnsafe(field === undefined ? { error } : { error, field }, { status })

const schemaIssue = (error: Schema.SchemaError, where: string) => {
  const issues = Protocol.describeSchemaIssues(error)
  const first = issues[0]
  return new ApiFailure({
    status: 400,
    error: `bad ${where}: ${issues.map((i) => i.message).join("; ") || error.message}`,
    ...(first === undefined || first.field === "" ? {} : { field: first.field }),
  })
}

const bearerOf = (header: string | undefined): string | undefined => {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header ?? "")
  return match?.[1]
}

/** The token of the request, or a 401 (none, unknown or revoked) or 403 (scope too narrow). */
const authorize = (needs: OperatorScope) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const secret = bearerOf(request.headers.authorization)
    if (secret === undefined)
      return yield* new ApiFailure({
        status: 401,
        error: "an operator token is needed: Authorization: Bearer <token> (picus operator-token create)",
      })
    const found = yield* authenticateOperator(secret)
    if (Option.isNone(found))
      return yield* new ApiFailure({ status: 401, error: "unknown or revoked operator token" })
    if (needs === "admin" && found.value.scope !== "admin")
      return yield* new ApiFailure({
        status: 403,
        error: `the token "${found.value.name}" has scope read; this needs an admin token`,
      })
    return found.value
  })

type Failures = ApiFailure | StoreError | Schema.SchemaError

/** Runs a route's body behind the token check, and turns its failures into JSON answers. */
const guard = <R>(
  needs: OperatorScope,
  body: (token: OperatorTokenInfo) => Effect.Effect<HttpServerResponse.HttpServerResponse, Failures, R>,
) =>
  Effect.flatMap(authorize(needs), body).pipe(
    Effect.catch((error) => {
      if (error instanceof ApiFailure) return Effect.succeed(failure(error.status, error.error, error.field))
      if (Schema.isSchemaError(error)) {
        const issue = schemaIssue(error, "query")
        return Effect.succeed(failure(issue.status, issue.error, issue.field))
      }
      // The store's reason is for the server's log; the client learns only that it may retry.
      return Effect.logWarning(`API: ${error.message}`).pipe(
        Effect.as(failure(503, "the database did not answer; try again")),
      )
    }),
    Effect.map(HttpServerResponse.setHeader("cache-control", "no-store")),
  )

const decodeQuery = <S extends Schema.Top & { readonly DecodingServices: never }>(schema: S) =>
  HttpServerRequest.schemaSearchParams(schema as never).pipe(
    Effect.mapError((error) => schemaIssue(error, "query")),
  ) as Effect.Effect<S["Type"], ApiFailure, HttpServerRequest.ParsedSearchParams>

const Limit = Schema.FiniteFromString.check(Schema.isInt(), Schema.isBetween({ minimum: 1, maximum: 10_000 }))
const limitOf = (limit: number | undefined, fallback: number) => limit ?? fallback
const ListQuery = Schema.Struct({ limit: Schema.optional(Limit) })
const SessionsQuery = Schema.Struct({ limit: Schema.optional(Limit), peer_id: Schema.optional(Protocol.Id) })
const OpenQuery = Schema.Struct({
  limit: Schema.optional(Limit),
  peer_id: Schema.optional(Protocol.Id),
  run_id: Schema.optional(Protocol.Id),
})
const IdParams = Schema.Struct({ id: Protocol.Id })

const Amount = Schema.Union([
  Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  Schema.String.check(Schema.isPattern(/^(100|[1-9]\d?)%$/)),
])
const amountOf = (value: number | string | undefined): RunAmount | undefined =>
  value === undefined
    ? undefined
    : typeof value === "number"
      ? { count: value }
      : { percent: Number(value.slice(0, -1)) }

/** `POST /api/runs`: a run as `picus run` starts one. */
export const SubmitRun = Schema.Struct({
  command: Schema.String,
  name: Schema.optional(Schema.String),
  target: Schema.Struct({
    peers: Schema.optional(Schema.Array(Schema.String)),
    os: Schema.optional(Schema.String),
    distro: Schema.optional(Schema.String),
    labels: Schema.optional(Schema.Record(Schema.String, Schema.String)),
    all: Schema.optional(Schema.Boolean),
  }),
  timeout_ms: Schema.optional(Schema.Int),
  deliver_within_ms: Schema.optional(
    Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 2_147_483_647 })),
  ),
  max_concurrency: Schema.optional(Amount),
  max_errors: Schema.optional(Amount),
  online_only: Schema.optional(Schema.Boolean),
  allow_empty: Schema.optional(Schema.Boolean),
  /** List the peers it would reach, and send nothing. */
  dry_run: Schema.optional(Schema.Boolean),
})

/** `POST /api/runs/:id/cancel`, `POST /api/tickets/:id/cancel`: why (optional). */
export const CancelBody = Schema.Struct({ reason: Schema.optional(Schema.String) })

const decodeCancelBody = Schema.decodeUnknownEffect(Schema.fromJsonString(CancelBody))

export const outcomeJson = (o: CancelOutcome) =>
  o.outcome === "unknown"
    ? { ticket: o.ticket, outcome: o.outcome }
    : o.outcome === "closed"
      ? { ticket: o.ticket, outcome: o.outcome, peer_id: o.peerId, state: o.state }
      : { ticket: o.ticket, outcome: o.outcome, peer_id: o.peerId }

// The JSON shapes, snake_case like the wire's and the command line's --json.
export const peerJson = (p: PeerView) => ({
  peer_id: p.peerId,
  os: p.os,
  distro: p.distro,
  hostname: p.hostname,
  agent_version: p.agentVersion,
  labels: p.labels,
  online: p.heldBy !== null,
  held_by: p.heldBy,
  session_id: p.sessionId,
  last_seen_at: p.lastSeenAt,
})
export const sessionJson = (s: SessionRow) => ({
  peer_id: s.peerId,
  session_id: s.sessionId,
  server_id: s.serverId,
  login_at: s.loginAt,
  logout_at: s.logoutAt,
  duration_ms: s.durationMs,
  logout_reason: s.logoutReason,
})
export const logJson = (r: LogRow) => ({
  id: r.id,
  at: r.at,
  event: r.event,
  peer_id: r.peerId,
  session_id: r.sessionId,
  reason: r.reason,
  server_id: r.serverId,
  repeats: r.repeats,
})
export const runJson = (r: RunInfo) => ({
  run_id: r.runId,
  name: r.name,
  command: r.command,
  created_at: r.createdAt,
  created_by: r.createdBy,
  closed_at: r.closedAt,
  deliver_by: r.deliverBy,
  timeout_ms: r.timeoutMs,
  target: r.target,
  max_concurrency: r.maxConcurrency,
  max_errors: r.maxErrors,
  counts: r.counts,
  offline: r.offline,
})
export const ticketJson = (t: TicketView) => ({
  ticket: t.ticket,
  run_id: t.runId,
  peer_id: t.peerId,
  name: t.name,
  command: t.command,
  state: t.state,
  attempts: t.attempts,
  exit_code: t.exitCode,
  output: t.output,
  truncated: t.truncated,
  close_reason: t.closeReason,
  online: t.online,
  created_at: t.createdAt,
  delivered_at: t.deliveredAt,
  started_at: t.startedAt,
  ended_at: t.endedAt,
  finished_at: t.finishedAt,
})

const json = (body: unknown) => HttpServerResponse.jsonUnsafe(body)

const encoder = new TextEncoder()
/** A comment line now and then keeps proxies and the browser from closing a quiet stream. */
const KEEPALIVE = Duration.seconds(15)

/** Registers the API's routes on the router. */
export const apiRoutes = HttpRouter.use((router) =>
  Effect.gen(function* () {
    const reports = yield* ReportStore
    const runs = yield* RunStore
    const transport = yield* Transport
    // The handlers run with the services the routes were built with.
    const services = yield* Effect.context<OperatorTokenStore | RunStore | TicketStore | Transport>()
    // One Redis subscription for all of this server's event streams, opened with the first and
    // closed after the last: a subscription per stream would be a Redis connection per client
    // (any read token could open thousands). Only what decodes as a feed event of this version
    // goes out; the feed never carries a token. A client too slow to keep up misses events (the
    // oldest go first), as the feed is at most once anyway.
    const feed = yield* Stream.share(
      transport.subscribe.pipe(Stream.filter((payload) => Protocol.decodeFeedEvent(payload) !== undefined)),
      { capacity: 4_096, strategy: "sliding" },
    )
    const guarded = <R>(
      needs: OperatorScope,
      body: (token: OperatorTokenInfo) => Effect.Effect<HttpServerResponse.HttpServerResponse, Failures, R>,
    ) => guard(needs, body).pipe(Effect.provide(services))

    yield* router.add(
      "GET",
      "/api/me",
      guarded("read", (token) =>
        Effect.succeed(json({ name: token.name, scope: token.scope, token_id: token.tokenId })),
      ),
    )
    yield* router.add(
      "GET",
      "/api/peers",
      guarded("read", () => Effect.map(runs.peerViews(), (peers) => json({ peers: peers.map(peerJson) }))),
    )
    yield* router.add(
      "GET",
      "/api/sessions",
      guarded("read", () =>
        Effect.gen(function* () {
          const query = yield* decodeQuery(SessionsQuery)
          const rows = yield* reports.sessions({
            limit: limitOf(query.limit, 1_000),
            ...(query.peer_id === undefined ? {} : { peerId: query.peer_id }),
          })
          return json({ sessions: rows.map(sessionJson) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/log",
      guarded("read", () =>
        Effect.gen(function* () {
          const query = yield* decodeQuery(ListQuery)
          const rows = yield* reports.registrationLog({ limit: limitOf(query.limit, 1_000) })
          return json({ log: rows.map(logJson) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/runs",
      guarded("read", () =>
        Effect.gen(function* () {
          const query = yield* decodeQuery(ListQuery)
          const recent = yield* runs.recentRuns(limitOf(query.limit, 50))
          return json({ runs: recent.map(runJson) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/runs/:id",
      guarded("read", () =>
        Effect.gen(function* () {
          const { id } = yield* HttpRouter.schemaPathParams(IdParams).pipe(
            Effect.mapError((error) => schemaIssue(error, "path")),
          )
          const info = yield* runs.runInfo(id)
          if (info === undefined)
            return yield* new ApiFailure({ status: 404, error: `no run ${id}`, field: "id" })
          const tickets = yield* runs.runTickets(id)
          return json({ run: runJson(info), tickets: tickets.map(ticketJson) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/tickets/open",
      guarded("read", () =>
        Effect.gen(function* () {
          const query = yield* decodeQuery(OpenQuery)
          const open = yield* runs.openTickets({
            limit: limitOf(query.limit, 500),
            ...(query.peer_id === undefined ? {} : { peerId: query.peer_id }),
            ...(query.run_id === undefined ? {} : { runId: query.run_id }),
          })
          return json({ tickets: open.map(ticketJson) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/tickets/:id",
      guarded("read", () =>
        Effect.gen(function* () {
          const { id } = yield* HttpRouter.schemaPathParams(IdParams).pipe(
            Effect.mapError((error) => schemaIssue(error, "path")),
          )
          const ticket = yield* runs.ticketView(id)
          if (ticket === undefined)
            return yield* new ApiFailure({ status: 404, error: `no ticket ${id}`, field: "id" })
          return json({ ticket: ticketJson(ticket) })
        }),
      ),
    )
    yield* router.add(
      "GET",
      "/api/events",
      guarded("read", () =>
        Effect.succeed(
          HttpServerResponse.stream(
            Stream.merge(
              feed.pipe(Stream.map((payload) => `data: ${payload}\n\n`)),
              Stream.fromSchedule(Schedule.spaced(KEEPALIVE)).pipe(Stream.map(() => ": keep-alive\n\n")),
            ).pipe(
              Stream.prepend([": connected\n\n"]),
              Stream.map((text) => encoder.encode(text)),
            ),
            { contentType: "text/event-stream", headers: { "x-accel-buffering": "no" } },
          ),
        ),
      ),
    )
    yield* router.add(
      "POST",
      "/api/runs",
      guarded("admin", (token) =>
        Effect.gen(function* () {
          const body = yield* HttpServerRequest.schemaBodyJson(SubmitRun).pipe(
            Effect.mapError((error) =>
              Schema.isSchemaError(error)
                ? schemaIssue(error, "body")
                : new ApiFailure({ status: 400, error: "the body is not JSON" }),
            ),
          )
          const target = {
            ...(body.target.peers === undefined ? {} : { peers: body.target.peers }),
            ...(body.target.os === undefined ? {} : { os: body.target.os }),
            ...(body.target.distro === undefined ? {} : { distro: body.target.distro }),
            ...(body.target.labels === undefined ? {} : { labels: body.target.labels }),
            ...(body.target.all === true ? { all: true } : {}),
          }
          if (Object.keys(target).length === 0)
            return yield* new ApiFailure({
              status: 400,
              error: "say which peers: target.peers, target.os, target.distro, target.labels or target.all",
              field: "target",
            })
          if (body.command.trim() === "")
            return yield* new ApiFailure({ status: 400, error: "command: empty", field: "command" })
          const maxConcurrency = amountOf(body.max_concurrency)
          const maxErrors = amountOf(body.max_errors)
          const created = yield* startRun({
            target,
            name: body.name ?? body.command.slice(0, 64),
            command: body.command,
            timeoutMs: body.timeout_ms ?? 30_000,
            deliverWithinMs: body.deliver_within_ms ?? 10 * 60_000,
            createdBy: `api:${token.name}`,
            ...(maxConcurrency === undefined ? {} : { maxConcurrency }),
            ...(maxErrors === undefined ? {} : { maxErrors }),
            onlineOnly: body.online_only === true,
            allowEmpty: body.allow_empty === true,
            dryRun: body.dry_run === true,
          }).pipe(
            Effect.catchIf(
              (error): error is InvalidJob | NoMatchingPeers =>
                error instanceof InvalidJob || error instanceof NoMatchingPeers,
              (error) =>
                Effect.fail(
                  error instanceof InvalidJob
                    ? new ApiFailure({ status: 400, error: error.message, field: error.field || "command" })
                    : new ApiFailure({ status: 422, error: error.message, field: "target" }),
                ),
            ),
          )
          if (body.dry_run === true)
            return json({
              run_id: null,
              dry_run: true,
              peers: created.peers.map((p) => ({
                peer_id: p.peerId,
                os: p.os,
                distro: p.distro,
                online: p.online,
                labels: p.labels,
              })),
              skipped: created.skipped.map((p) => p.peerId),
            })
          return HttpServerResponse.jsonUnsafe(
            {
              run_id: created.runId,
              tickets: created.tickets.length,
              ticket_ids: created.tickets.map((t) => t.ticket),
              peers: created.peers.map((p) => p.peerId),
              offline: created.peers.filter((p) => !p.online).map((p) => p.peerId),
              skipped: created.skipped.map((p) => p.peerId),
            },
            { status: 201 },
          )
        }),
      ),
    )
    // An empty body gives no reason; anything else must be the JSON object.
    const cancelBody = Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      const text = yield* request.text.pipe(
        Effect.mapError(() => new ApiFailure({ status: 400, error: "the body could not be read" })),
      )
      if (text.trim() === "") return { reason: undefined }
      return yield* decodeCancelBody(text).pipe(Effect.mapError((error) => schemaIssue(error, "body")))
    })
    const invalid = (error: InvalidJob) =>
      new ApiFailure({ status: 400, error: error.message, field: error.field })
    yield* router.add(
      "POST",
      "/api/runs/:id/cancel",
      guarded("admin", (token) =>
        Effect.gen(function* () {
          const { id } = yield* HttpRouter.schemaPathParams(IdParams).pipe(
            Effect.mapError((error) => schemaIssue(error, "path")),
          )
          const body = yield* cancelBody
          const outcomes = yield* cancelRun({
            runId: id,
            by: `api:${token.name}`,
            reason: body.reason ?? "cancelled by the operator",
            serverId: "api",
          }).pipe(Effect.catchTag("InvalidJob", (error) => Effect.fail(invalid(error))))
          if (Option.isNone(outcomes))
            return yield* new ApiFailure({ status: 404, error: `no run ${id}`, field: "id" })
          return json({ run_id: id, outcomes: outcomes.value.map(outcomeJson) })
        }),
      ),
    )
    yield* router.add(
      "POST",
      "/api/tickets/:id/cancel",
      guarded("admin", (token) =>
        Effect.gen(function* () {
          const { id } = yield* HttpRouter.schemaPathParams(IdParams).pipe(
            Effect.mapError((error) => schemaIssue(error, "path")),
          )
          const body = yield* cancelBody
          const outcomes = yield* cancelTickets({
            tickets: [id],
            by: `api:${token.name}`,
            reason: body.reason ?? "cancelled by the operator",
            serverId: "api",
          }).pipe(Effect.catchTag("InvalidJob", (error) => Effect.fail(invalid(error))))
          if (outcomes.every((o) => o.outcome === "unknown"))
            return yield* new ApiFailure({ status: 404, error: `no ticket ${id}`, field: "id" })
          return json({ outcomes: outcomes.map(outcomeJson) })
        }),
      ),
    )
    // Anything else under /api/ is a JSON 404, after the token check (it tells nothing to a stranger).
    yield* router.add(
      "*",
      "/api/*",
      guarded("read", () => Effect.succeed(failure(404, "no such endpoint (see docs/api.md)"))),
    )
  }),
)
