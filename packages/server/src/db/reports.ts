import { ReportStore, type ReportStoreService, ResultStatus } from "@picus/core"
import { Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, limitOf, NullableInt, NullableString, std } from "./shared.ts"

const SessionRow = std(
  Schema.Struct({
    peerId: Schema.String,
    sessionId: Schema.String,
    loginAt: Schema.Int,
    logoutAt: NullableInt,
    durationMs: Schema.Int,
    logoutReason: NullableString,
    serverId: Schema.String,
  }),
)
const LogRow = std(
  Schema.Struct({
    id: Schema.Int,
    at: Schema.Int,
    event: Schema.Literals(["login", "rejected", "logout", "shutdown"]),
    peerId: NullableString,
    sessionId: NullableString,
    reason: NullableString,
    serverId: Schema.String,
    serverIp: NullableString,
    repeats: Schema.Int,
  }),
)
const ResultRow = std(
  Schema.Struct({
    ticket: Schema.String,
    peerId: Schema.String,
    jobName: Schema.String,
    status: ResultStatus,
    exitCode: NullableInt,
    output: Schema.String,
    truncated: Schema.Boolean,
    receivedAt: Schema.Int,
  }),
)

/** The ReportStore over a slonik pool. */
export const makePgReports = (pool: DatabasePool): ReportStoreService => {
  return ReportStore.of({
    sessions: (filter) =>
      attempt("sessions", () =>
        // Durations come from the millisecond-truncated ends, so durationMs === logoutAt - loginAt.
        pool.any(sql.type(SessionRow)`
          select peer_id as "peerId", session_id::text as "sessionId", login_at as "loginAt",
            logout_at as "logoutAt",
            (extract(epoch from date_trunc('milliseconds', coalesce(logout_at, now()))
              - date_trunc('milliseconds', login_at)) * 1000)::bigint as "durationMs",
            logout_reason as "logoutReason", server_id as "serverId"
          from peer_sessions
          where ${filter.peerId === undefined ? sql.fragment`true` : sql.fragment`peer_id = ${filter.peerId}`}
          order by login_at desc, session_id desc
          limit ${limitOf(filter.limit)}
        `),
      ),

    registrationLog: (filter) =>
      attempt("registrationLog", () =>
        pool.any(sql.type(LogRow)`
          select id, at, event, peer_id as "peerId", session_id::text as "sessionId", reason,
            server_id as "serverId", server_ip as "serverIp", repeats
          from registration_log
          order by id desc
          limit ${limitOf(filter.limit)}
        `),
      ),

    results: (filter) =>
      attempt("results", () =>
        pool.any(sql.type(ResultRow)`
          select r.ticket, r.peer_id as "peerId", t.job_name as "jobName", r.status, r.exit_code as "exitCode",
            r.output, r.truncated, r.received_at as "receivedAt"
          from job_results r
          join tickets t on t.ticket = r.ticket
          where ${filter.peerId === undefined ? sql.fragment`true` : sql.fragment`r.peer_id = ${filter.peerId}`}
          order by r.received_at desc, length(r.ticket) desc, r.ticket desc
          limit ${limitOf(filter.limit)}
        `),
      ),
  })
}
