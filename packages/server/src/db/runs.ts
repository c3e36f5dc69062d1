import {
  isEmptyTarget,
  NoMatchingPeers,
  RUN_DEADLINE_REASON,
  type RunAdvance,
  type RunInfo,
  type RunPeer,
  RunStore,
  type RunStoreService,
  type RunTarget,
  resolveAmount,
  type SessionOwner,
  StoreError,
  type Ticket,
  TicketState,
} from "@picus/core"
import { Effect, Schema } from "effect"
import { type CommonQueryMethods, type DatabasePool, sql } from "slonik"
import {
  attempt,
  limitOf,
  NullableInt,
  NullableString,
  ownerLost,
  std,
  storeError,
  TicketFields,
  ticketColumns,
} from "./shared.ts"

const Json = Schema.String
const MatchRow = std(
  Schema.Struct({
    peerId: Schema.String,
    os: NullableString,
    distro: NullableString,
    labels: Json,
    sessionId: NullableString,
    ownerId: NullableString,
    epoch: NullableInt,
    expired: Schema.NullOr(Schema.Boolean),
  }),
)
const RunIdRow = std(Schema.Struct({ runId: Schema.String }))
const TicketRow = std(Schema.Struct(TicketFields))
const PromotedRow = std(
  Schema.Struct({
    cancelled: Schema.Int,
    ticket: NullableString,
    peerId: NullableString,
    sessionId: NullableString,
    jobId: NullableString,
    name: NullableString,
    os: NullableString,
    distro: NullableString,
    command: NullableString,
    timeoutMs: NullableInt,
    state: Schema.NullOr(TicketState),
    attempts: NullableInt,
    deliveredAt: NullableInt,
    ownerId: NullableString,
    ownerEpoch: NullableInt,
    ownerExpired: Schema.NullOr(Schema.Boolean),
  }),
)
const CountRow = std(Schema.Struct({ count: Schema.Int }))
const RunInfoRow = std(
  Schema.Struct({
    runId: Schema.String,
    createdAt: Schema.Number,
    createdBy: Schema.String,
    name: Schema.String,
    command: Schema.String,
    timeoutMs: Schema.Int,
    target: Json,
    maxConcurrency: NullableInt,
    maxErrors: NullableInt,
    deliverBy: Schema.Number,
    closedAt: Schema.NullOr(Schema.Number),
    counts: Json,
    offline: Schema.Int,
  }),
)
const TicketViewRow = std(
  Schema.Struct({
    ticket: Schema.String,
    runId: NullableString,
    peerId: Schema.String,
    name: Schema.String,
    command: Schema.String,
    state: TicketState,
    attempts: Schema.Int,
    closeReason: NullableString,
    createdAt: Schema.Number,
    deliveredAt: Schema.NullOr(Schema.Number),
    finishedAt: Schema.NullOr(Schema.Number),
    exitCode: NullableInt,
    output: NullableString,
    truncated: Schema.Boolean,
    startedAt: Schema.NullOr(Schema.Number),
    endedAt: Schema.NullOr(Schema.Number),
    online: Schema.Boolean,
  }),
)
const PeerViewRow = std(
  Schema.Struct({
    peerId: Schema.String,
    os: NullableString,
    distro: NullableString,
    hostname: NullableString,
    agentVersion: NullableString,
    labels: Json,
    lastSeenAt: Schema.Number,
    heldBy: NullableString,
    sessionId: NullableString,
  }),
)

const parseObject = (text: string): Record<string, string> => {
  const value: unknown = JSON.parse(text)
  return value !== null && typeof value === "object" ? (value as Record<string, string>) : {}
}

const rejected = (operation: string, message: string) =>
  new StoreError({ operation, message, kind: "rejected" })

/** The target as a condition on peers (alias `p`): every criterion given must hold. */
const targetCondition = (target: RunTarget) =>
  sql.join(
    [
      sql.fragment`true`,
      ...(target.peers === undefined
        ? []
        : [sql.fragment`p.peer_id = any(${sql.array([...target.peers], "text")})`]),
      ...(target.os === undefined ? [] : [sql.fragment`p.os = ${target.os}`]),
      ...(target.distro === undefined ? [] : [sql.fragment`p.distro = ${target.distro}`]),
      ...(Object.keys(target.labels ?? {}).length === 0
        ? []
        : [sql.fragment`p.labels @> ${JSON.stringify(target.labels)}::jsonb`]),
    ],
    sql.fragment` and `,
  )

/** A ticket view's columns, over tickets `t` and their result `r`; `full` for the whole output. */
const viewColumns = (full: boolean) => sql.fragment`
  t.ticket, t.run_id as "runId", t.peer_id as "peerId", t.job_name as "name", t.command, t.state, t.attempts,
  t.close_reason as "closeReason", t.created_at as "createdAt", t.delivered_at as "deliveredAt",
  t.finished_at as "finishedAt", r.exit_code as "exitCode",
  ${full ? sql.fragment`r.output` : sql.fragment`split_part(r.output, E'\n', 1)`} as output,
  coalesce(r.truncated, false) as truncated, r.started_at as "startedAt", r.finished_at as "endedAt",
  exists (select 1 from sessions s where s.peer_id = t.peer_id and s.closed_at is null) as online
`

const runInfoColumns = sql.fragment`
  r.run_id as "runId", r.created_at as "createdAt", r.created_by as "createdBy", r.name, r.command,
  r.timeout_ms as "timeoutMs", r.target::text as target, r.max_concurrency as "maxConcurrency",
  r.max_errors as "maxErrors", r.deliver_by as "deliverBy", r.closed_at as "closedAt",
  coalesce((
    select jsonb_object_agg(state, n) from (
      select t.state, count(*) as n from tickets t where t.run_id = r.run_id group by t.state
    ) c
  ), '{}')::text as counts,
  (select count(*) from tickets t
    where t.run_id = r.run_id and t.finished_at is null
      and not exists (select 1 from sessions s where s.peer_id = t.peer_id and s.closed_at is null))::int as offline
`

const runInfoOf = (row: {
  readonly runId: string
  readonly createdAt: number
  readonly createdBy: string
  readonly name: string
  readonly command: string
  readonly timeoutMs: number
  readonly target: string
  readonly maxConcurrency: number | null
  readonly maxErrors: number | null
  readonly deliverBy: number
  readonly closedAt: number | null
  readonly counts: string
  readonly offline: number
}): RunInfo => ({ ...row, target: JSON.parse(row.target) as RunTarget, counts: JSON.parse(row.counts) })

/** The RunStore over a slonik pool. */
export const makePgRuns = (pool: DatabasePool): RunStoreService => {
  /** Lets pending tickets of the (locked) runs go, or cancels them; closes the runs with none open. */
  const advanceIn = async (tx: CommonQueryMethods, runIds: ReadonlyArray<string>) => {
    const none: RunAdvance = { promoted: [], owners: [], cancelled: 0, undeliverable: 0 }
    if (runIds.length === 0) return none
    // Locked first, in a statement of its own: the counts below are then read after any other
    // advance of these runs committed, so two never let go more than the bound between them.
    const locked = await tx.anyFirst(sql.type(RunIdRow)`
      select run_id as "runId" from runs
      where run_id = any(${sql.array([...new Set(runIds)], "text")}) and closed_at is null
      order by run_id
      for update
    `)
    if (locked.length === 0) return none
    const ids = sql.array([...locked], "text")
    const rows = await tx.any(sql.type(PromotedRow)`
      with c as (
        select r.run_id, r.max_concurrency, r.max_errors,
          count(*) filter (where t.state in ('failed', 'timed_out'))::int as errors,
          count(*) filter (where t.state in ('queued', 'delivered'))::int as active
        from runs r join tickets t on t.run_id = r.run_id
        where r.run_id = any(${ids})
        group by r.run_id, r.max_concurrency, r.max_errors
      ), cancelled as (
        update tickets t set state = 'cancelled', finished_at = now(),
          close_reason = format('max errors exceeded (%s > %s)', c.errors, c.max_errors)
        from c
        where t.run_id = c.run_id and c.max_errors is not null and c.errors > c.max_errors
          and t.finished_at is null and t.state in ('pending', 'queued')
        returning t.ticket
      ), candidates as (
        select t.ticket, t.peer_id, c.max_concurrency, c.active,
          row_number() over (partition by t.run_id order by length(t.ticket), t.ticket) as n
        from c join tickets t on t.run_id = c.run_id and t.finished_at is null and t.state = 'pending'
        where c.max_errors is null or c.errors <= c.max_errors
      ), chosen as (
        select k.ticket, o.session_id, o.owner_id, o.epoch, o.expired
        from candidates k
        left join lateral (
          select s.session_id, s.owner_id, s.epoch, ${ownerLost("s")} as expired from sessions s
          where s.peer_id = k.peer_id and s.closed_at is null
          order by s.opened_at desc limit 1
        ) o on true
        where k.max_concurrency is null or k.n <= k.max_concurrency - k.active
      ), promoted as (
        -- A new id: a holder reads only the tickets newer than the last it has.
        update tickets t set ticket = nextval('ticket_seq')::text, state = 'queued', session_id = ch.session_id
        from chosen ch
        where t.ticket = ch.ticket
        returning t.*, ch.owner_id, ch.epoch as owner_epoch, ch.expired as owner_expired
      )
      select (select count(*) from cancelled)::int as cancelled, ${ticketColumns},
        owner_id as "ownerId", owner_epoch as "ownerEpoch", owner_expired as "ownerExpired"
      from (select 1) as one left join promoted on true
    `)
    await tx.query(sql.type(std(Schema.Struct({})))`
      update runs r set closed_at = now()
      where r.run_id = any(${ids}) and r.closed_at is null
        and not exists (select 1 from tickets t where t.run_id = r.run_id and t.finished_at is null)
    `)
    const promoted: Array<Ticket> = []
    const owners = new Map<string, SessionOwner>()
    for (const row of rows) {
      const { cancelled: _c, ownerId, ownerEpoch, ownerExpired, ...t } = row
      const { ticket, peerId, name, os, distro, command, timeoutMs, state, attempts } = t
      if (ticket === null || peerId === null || name === null || os === null || distro === null) continue
      if (command === null || timeoutMs === null || state === null || attempts === null) continue
      promoted.push({ ...t, ticket, peerId, name, os, distro, command, timeoutMs, state, attempts })
      if (t.sessionId !== null && ownerId !== null && ownerEpoch !== null && ownerExpired !== null) {
        owners.set(t.sessionId, { sessionId: t.sessionId, ownerId, epoch: ownerEpoch, expired: ownerExpired })
      }
    }
    return { promoted, owners: [...owners.values()], cancelled: rows[0]?.cancelled ?? 0, undeliverable: 0 }
  }

  return RunStore.of({
    createRun: (spec) =>
      Effect.suspend(() => {
        if (isEmptyTarget(spec.target)) {
          return Effect.fail(
            new NoMatchingPeers({
              message: "no target given: name peers, an os, a distro, labels, or all",
              unknown: [],
            }),
          )
        }
        if (!Number.isSafeInteger(spec.timeoutMs) || spec.timeoutMs <= 0 || spec.timeoutMs > 2_147_483_647) {
          return Effect.fail(
            rejected("createRun", `the job timeout must be a positive number of ms, got ${spec.timeoutMs}`),
          )
        }
        if (!Number.isFinite(spec.deliverWithinMs) || spec.deliverWithinMs < 0) {
          return Effect.fail(
            rejected("createRun", `the run's deadline must be 0 ms or more, got ${spec.deliverWithinMs}`),
          )
        }
        return Effect.tryPromise({
          try: () =>
            pool.transaction(async (tx) => {
              // Each match's open session is locked for share, so a login replacing it waits for the
              // run's tickets and then carries them over.
              const matched = await tx.any(sql.type(MatchRow)`
                select p.peer_id as "peerId", p.os, p.distro, p.labels::text as labels,
                  o.session_id::text as "sessionId", o.owner_id as "ownerId", o.epoch, o.expired
                from peers p
                left join lateral (
                  select s.session_id, s.owner_id, s.epoch, ${ownerLost("s")} as expired from sessions s
                  where s.peer_id = p.peer_id and s.closed_at is null
                  order by s.opened_at desc limit 1
                  for share of s
                ) o on true
                where ${targetCondition(spec.target)}
                order by p.peer_id
              `)
              const known = new Set(matched.map((m) => m.peerId))
              const unknown = (spec.target.peers ?? []).filter((id) => !known.has(id))
              if (unknown.length > 0 && spec.target.os === undefined && spec.target.distro === undefined) {
                // Named peers that never registered (with other criteria, a named peer may simply not match).
                const seen = new Set(
                  await tx.anyFirst(sql.type(std(Schema.Struct({ peer_id: Schema.String })))`
                    select peer_id from peers where peer_id = any(${sql.array(unknown, "text")})
                  `),
                )
                const never = unknown.filter((id) => !seen.has(id))
                if (never.length > 0) {
                  throw new NoMatchingPeers({
                    message: `no peer ${never.join(", ")} has ever registered`,
                    unknown: never,
                  })
                }
              }
              const peerOf = (m: (typeof matched)[number]): RunPeer => ({
                peerId: m.peerId,
                os: m.os,
                distro: m.distro,
                labels: parseObject(m.labels),
                online: m.sessionId !== null,
              })
              const chosen = spec.onlineOnly === true ? matched.filter((m) => m.sessionId !== null) : matched
              const skipped = spec.onlineOnly === true ? matched.filter((m) => m.sessionId === null) : []
              const maxConcurrency = resolveAmount(spec.maxConcurrency, chosen.length, "concurrency")
              const maxErrors = resolveAmount(spec.maxErrors, chosen.length, "errors")
              const base = {
                peers: chosen.map(peerOf),
                skipped: skipped.map(peerOf),
                maxConcurrency,
                maxErrors,
              }
              if (spec.dryRun === true) return { ...base, runId: null, tickets: [], owners: [] }
              if (chosen.length === 0 && spec.allowEmpty !== true) {
                throw new NoMatchingPeers({
                  message:
                    matched.length === 0
                      ? "no peer matches the target"
                      : `none of the ${matched.length} matching peer(s) is online`,
                  unknown: [],
                })
              }
              const runId = await tx.oneFirst(sql.type(RunIdRow)`
                insert into runs (created_by, name, command, timeout_ms, target, max_concurrency, max_errors,
                  deliver_by, closed_at)
                values (${spec.createdBy}, ${spec.name}, ${spec.command}, ${spec.timeoutMs},
                  ${JSON.stringify(spec.target)}::jsonb, ${maxConcurrency}, ${maxErrors},
                  now() + ${spec.deliverWithinMs}::float8 * interval '1 millisecond',
                  ${chosen.length === 0 ? sql.fragment`now()` : sql.fragment`null`})
                returning run_id as "runId"
              `)
              if (chosen.length === 0) return { ...base, runId, tickets: [], owners: [] }
              const queued = (i: number) => maxConcurrency === null || i < maxConcurrency
              // Ids drawn in the peers' order, so the run's first tickets are the ones let go first.
              const tickets = await tx.any(sql.type(TicketRow)`
                with numbered as (
                  select nextval('ticket_seq')::text as ticket, x.* from (
                    select * from ${sql.unnest(
                      chosen.map((m, i) => [
                        i,
                        m.peerId,
                        queued(i) ? m.sessionId : null,
                        m.os ?? "",
                        m.distro ?? "",
                        queued(i) ? "queued" : "pending",
                      ]),
                      ["int4", "text", "uuid", "text", "text", "text"],
                    )} as j(ord, peer_id, session_id, os, distro, state)
                    order by j.ord
                  ) x
                ), inserted as (
                  insert into tickets (ticket, peer_id, session_id, job_name, os, distro, command, timeout_ms,
                    server_id, state, run_id)
                  select n.ticket, n.peer_id, n.session_id, ${spec.name}, n.os, n.distro, ${spec.command},
                    ${spec.timeoutMs}, ${spec.createdBy}, n.state, ${runId}
                  from numbered n
                  returning *
                )
                select ${ticketColumns} from inserted order by length(ticket), ticket
              `)
              const owners = new Map<string, SessionOwner>()
              for (const [i, m] of chosen.entries()) {
                if (!queued(i) || m.sessionId === null || m.ownerId === null) continue
                if (m.epoch === null || m.expired === null) continue
                owners.set(m.sessionId, {
                  sessionId: m.sessionId,
                  ownerId: m.ownerId,
                  epoch: m.epoch,
                  expired: m.expired,
                })
              }
              return { ...base, runId, tickets, owners: [...owners.values()] }
            }),
          catch: (error) => (error instanceof NoMatchingPeers ? error : storeError("createRun", error)),
        }).pipe(Effect.withSpan("PgStore.createRun"))
      }),

    advanceRuns: (runIds) =>
      attempt("advanceRuns", async () =>
        runIds.length === 0
          ? { promoted: [], owners: [], cancelled: 0, undeliverable: 0 }
          : pool.transaction((tx) => advanceIn(tx, runIds)),
      ),

    sweepRuns: () =>
      attempt("sweepRuns", async () => {
        const open = await pool.anyFirst(sql.type(RunIdRow)`
          select run_id as "runId" from runs where closed_at is null
        `)
        if (open.length === 0) return { promoted: [], owners: [], cancelled: 0, undeliverable: 0 }
        const late = await pool.one(sql.type(CountRow)`
          with ended as (
            update tickets t set state = 'undeliverable', finished_at = now(), close_reason = ${RUN_DEADLINE_REASON}
            from runs r
            where r.run_id = any(${sql.array([...open], "text")}) and r.closed_at is null and r.deliver_by <= now()
              and t.run_id = r.run_id and t.finished_at is null and t.state in ('pending', 'queued')
            returning t.ticket
          )
          select count(*)::int as count from ended
        `)
        const advanced = await pool.transaction((tx) => advanceIn(tx, open))
        return { ...advanced, undeliverable: late.count }
      }),

    runInfo: (runId) =>
      attempt("runInfo", async () => {
        const row = await pool.maybeOne(
          sql.type(RunInfoRow)`select ${runInfoColumns} from runs r where r.run_id = ${runId}`,
        )
        return row === null ? undefined : runInfoOf(row)
      }),

    recentRuns: (limit) =>
      attempt("recentRuns", async () => {
        const rows = await pool.any(sql.type(RunInfoRow)`
          select ${runInfoColumns} from (
            select * from runs order by created_at desc, length(run_id) desc, run_id desc limit ${limitOf(limit)}
          ) r
          order by r.created_at desc, length(r.run_id) desc, r.run_id desc
        `)
        return rows.map(runInfoOf)
      }),

    runTickets: (runId, options) =>
      attempt("runTickets", async () =>
        pool.any(sql.type(TicketViewRow)`
          select ${viewColumns(false)}
          from tickets t left join job_results r on r.ticket = t.ticket
          where t.run_id = ${runId}
            ${
              options?.endedSince === undefined
                ? sql.fragment``
                : sql.fragment`and t.finished_at >= to_timestamp(${options.endedSince}::float8 / 1000)`
            }
          order by length(t.ticket), t.ticket
        `),
      ),

    ticketView: (ticket) =>
      attempt("ticketView", async () => {
        const row = await pool.maybeOne(sql.type(TicketViewRow)`
          select ${viewColumns(true)}
          from tickets t left join job_results r on r.ticket = t.ticket
          where t.ticket = ${ticket}
        `)
        return row ?? undefined
      }),

    openTickets: ({ peerId, runId, limit }) =>
      attempt("openTickets", async () =>
        pool.any(sql.type(TicketViewRow)`
          select ${viewColumns(false)}
          from tickets t left join job_results r on r.ticket = t.ticket
          where t.finished_at is null
            ${peerId === undefined ? sql.fragment`` : sql.fragment`and t.peer_id = ${peerId}`}
            ${runId === undefined ? sql.fragment`` : sql.fragment`and t.run_id = ${runId}`}
          order by t.created_at, length(t.ticket), t.ticket
          limit ${limitOf(limit)}
        `),
      ),

    peerViews: () =>
      attempt("peerViews", async () => {
        const rows = await pool.any(sql.type(PeerViewRow)`
          select p.peer_id as "peerId", p.os, p.distro, p.hostname, p.agent_version as "agentVersion",
            p.labels::text as labels, p.last_seen_at as "lastSeenAt", o.owner_id as "heldBy",
            o.session_id::text as "sessionId"
          from peers p
          left join lateral (
            select s.session_id, s.owner_id from sessions s
            where s.peer_id = p.peer_id and s.closed_at is null
            order by s.opened_at desc limit 1
          ) o on true
          order by p.peer_id
        `)
        return rows.map((row) => ({ ...row, labels: parseObject(row.labels) }))
      }),
  })
}
