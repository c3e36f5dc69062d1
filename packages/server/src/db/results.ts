import {
  CANCELLED_ON_PEER,
  LeaseLost,
  ResultStore,
  type ResultStoreService,
  ticketStateOf,
} from "@picus/core"
import { Effect, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, std, UUID } from "./shared.ts"

const OutcomeRow = std(
  Schema.Struct({
    ord: Schema.Int,
    outcome: Schema.Literals([
      "recorded",
      "duplicate",
      "unknown_ticket",
      "foreign_ticket",
      "ticket_closed",
      "lease_lost",
    ]),
    runId: Schema.NullOr(Schema.String),
  }),
)

/** The ResultStore over a slonik pool. */
export const makePgResults = (pool: DatabasePool): ResultStoreService => {
  const self: ResultStoreService = ResultStore.of({
    recordResult: (result) =>
      self
        .recordResults([result])
        .pipe(
          Effect.flatMap(([outcome]) =>
            outcome === "lease_lost" || outcome === undefined
              ? Effect.fail(new LeaseLost({ sessionId: result.sessionId, epoch: result.epoch }))
              : Effect.succeed(outcome),
          ),
        ),

    recordResults: (results) => Effect.map(self.recordResultBatch(results), ({ outcomes }) => outcomes),

    recordResultBatch: (results) =>
      attempt("recordResults", async () => {
        if (results.length === 0) return { outcomes: [], runs: [] }
        // One statement, so one round trip for a whole batch, with the same checks as recordIn: the
        // sessions' leases held at the results' epochs (locked against a takeover until commit),
        // the tickets locked, then one insert and one update. A copy recorded concurrently loses
        // on the primary key and is told `duplicate`.
        // Prepared (named): planned once per connection, not at every batch (see db/pool.ts).
        const rows = await pool.any(sql.prepared("record results", OutcomeRow)`
          with input as (
            select * from ${sql.unnest(
              results.map((r, i) => [
                i,
                r.ticket,
                r.peerId,
                UUID.test(r.sessionId) ? r.sessionId.toLowerCase() : null,
                r.epoch,
                r.status,
                ticketStateOf(r.status),
                r.exitCode,
                r.output.replaceAll("\u0000", "\uFFFD"),
                r.truncated,
                r.startedAt,
                r.finishedAt,
                r.serverId,
              ]),
              [
                "int4",
                "text",
                "text",
                "uuid",
                "int4",
                "text",
                "text",
                "int4",
                "text",
                "bool",
                "float8",
                "float8",
                "text",
              ],
            )} as v(ord, ticket, peer_id, session_id, epoch, status, new_state, exit_code, output, truncated,
              started_ms, finished_ms, server_id)
          -- Rows are found through their keys (= any of an array): an IN over the input let the planner
          -- scan all of tickets and job_results once their statistics lagged, a cost that grew
          -- with the tables.
          ), held as (
            select s.session_id, s.epoch from sessions s
            where s.session_id = any(array(select session_id from input)) and s.closed_at is null
            order by s.session_id
            for share
          ), locked as (
            select t.ticket, t.peer_id, t.session_id, t.state, t.run_id, r.ticket is not null as has_result
            from tickets t left join job_results r on r.ticket = t.ticket
            where t.ticket = any(array(select ticket from input))
            order by t.ticket
            for update of t
          ), checked as (
            select i.*, l.run_id,
              case
                when h.session_id is null then 'lease_lost'
                when l.ticket is null then 'unknown_ticket'
                when l.peer_id <> i.peer_id or l.session_id is distinct from i.session_id then 'foreign_ticket'
                -- A ticket locked after a concurrent copy committed shows its new state, but not (in this
                -- statement's snapshot) its result: succeeded and failed come only from a result.
                when l.has_result or l.state in ('succeeded', 'failed') then 'duplicate'
                when l.state not in ('queued', 'delivered') then 'ticket_closed'
                else 'recorded'
              end as verdict
            from input i
            left join held h on h.session_id = i.session_id and h.epoch = i.epoch
            left join locked l on l.ticket = i.ticket
          ), judged as (
            -- Of several copies of one result in the batch, the first that passes is recorded.
            select *,
              case
                when verdict = 'recorded' and count(*) filter (where verdict = 'recorded') over (
                  partition by ticket order by ord rows between unbounded preceding and 1 preceding
                ) > 0 then 'duplicate'
                else verdict
              end as outcome
            from checked
          ), inserted as (
            insert into job_results (
              ticket, peer_id, session_id, status, exit_code, output, truncated, started_at, finished_at, server_id
            )
            select ticket, peer_id, session_id, status, exit_code, output, truncated,
              to_timestamp(started_ms / 1000), to_timestamp(finished_ms / 1000), server_id
            from judged where outcome = 'recorded'
            on conflict (ticket) do nothing
            returning ticket
          ), updated as (
            -- A job is sent before its delivery is marked: a result may come first.
            -- A job its peer reports cancelled ends with who and why, as its cancel request said.
            update tickets t set state = j.new_state, finished_at = now(),
              close_reason = case when j.new_state = 'cancelled'
                then coalesce(t.cancel_reason, ${CANCELLED_ON_PEER}) else t.close_reason end,
              delivered_at = coalesce(t.delivered_at, now()), attempts = greatest(t.attempts, 1)
            from judged j join inserted i on i.ticket = j.ticket
            where j.outcome = 'recorded' and t.ticket = j.ticket
          )
          select j.ord,
            case when j.outcome = 'recorded' and i.ticket is null then 'duplicate' else j.outcome end as outcome,
            case when i.ticket is not null then j.run_id end as "runId"
          from judged j left join inserted i on i.ticket = j.ticket and j.outcome = 'recorded'
          order by j.ord
        `)
        const runs = new Set<string>()
        for (const row of rows) if (row.runId !== null) runs.add(row.runId)
        return { outcomes: rows.map((r) => r.outcome), runs: [...runs] }
      }),
  })
  return self
}
