import { RetentionStore, type RetentionStoreService, TERMINAL_TICKET_STATES } from "@picus/core"
import { Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, std } from "./shared.ts"

const Counts = std(Schema.Struct({ tickets: Schema.Int, results: Schema.Int }))
const Count = std(Schema.Struct({ n: Schema.Int }))

/** Any number, the same on every instance: pg_try_advisory_xact_lock's key for pruning. */
const PRUNING_LOCK = 7_306_110

/**
 * Each batch is one short transaction that first takes the pruning lock without waiting (another
 * instance pruning: skipped), then deletes at most `batchSize` rows of each kind, oldest first,
 * through indexes on when they ended (migration 012); row locks it cannot take are skipped.
 */
export const makePgRetention = (pool: DatabasePool): RetentionStoreService =>
  RetentionStore.of({
    prune: ({ before, batchSize }) =>
      attempt("prune", () =>
        pool.transaction(async (tx) => {
          const locked = await tx.oneFirst(
            sql.type(std(Schema.Struct({ locked: Schema.Boolean })))`
              select pg_try_advisory_xact_lock(${PRUNING_LOCK}) as locked`,
          )
          if (!locked) return "skipped" as const
          const cutoff = sql.fragment`to_timestamp(${before}::double precision / 1000)`
          // Results first within the statement: their foreign key is checked at its end.
          const { tickets, results } = await tx.one(sql.type(Counts)`
            with doomed as (
              select ticket from tickets
              where finished_at < ${cutoff}
                and state = any(${sql.array([...TERMINAL_TICKET_STATES], "text")})
              order by finished_at
              limit ${batchSize}
              for update skip locked
            ),
            r as (delete from job_results where ticket in (select ticket from doomed) returning 1),
            t as (delete from tickets where ticket in (select ticket from doomed) returning 1)
            select (select count(*) from t)::int as tickets, (select count(*) from r)::int as results
          `)
          // A session's login and logout go together, and only once it has logged out.
          const ended = await tx.any(sql.type(std(Schema.Struct({ sessionId: Schema.String })))`
            select session_id::text as "sessionId" from registration_log
            where event = 'logout' and at < ${cutoff}
            order by at
            limit ${batchSize}
          `)
          const sessionIds = ended.map((e) => e.sessionId)
          const sessionRows = await tx.oneFirst(sql.type(Count)`
            with d as (
              delete from registration_log
              where (event = 'login' and session_id = any(${sql.array(sessionIds, "uuid")}))
                 or (event = 'logout' and session_id = any(${sql.array(sessionIds, "uuid")}))
              returning 1
            )
            select count(*)::int as n from d
          `)
          const otherRows = await tx.oneFirst(sql.type(Count)`
            with d as (
              delete from registration_log where id in (
                select id from registration_log
                where event in ('rejected', 'shutdown') and at < ${cutoff}
                order by at
                limit ${batchSize}
              ) returning 1
            )
            select count(*)::int as n from d
          `)
          const sessions = await tx.oneFirst(sql.type(Count)`
            with d as (
              delete from sessions
              where session_id = any(${sql.array(sessionIds, "uuid")}) and closed_at is not null
              returning 1
            )
            select count(*)::int as n from d
          `)
          return { tickets, results, logRows: sessionRows + otherRows, sessions }
        }),
      ),
  })
