import {
  type CancelOutcome,
  cancelReasonOf,
  isTerminal,
  ResultStatus,
  type SessionOwner,
  StoreError,
  type SubmittedJob,
  type Ticket,
  TicketState,
  TicketStore,
  type TicketStoreService,
} from "@picus/core"
import { Effect, Option, Schema } from "effect"
import { type CommonQueryMethods, type DatabasePool, sql } from "slonik"
import {
  attempt,
  Fenced,
  fenced,
  NullableInt,
  NullableString,
  OwnerRow,
  ownerLost,
  std,
  TicketFields,
  TicketRow,
  ticketColumns,
  ticketOrder,
  UUID,
} from "./shared.ts"

const TicketIdRow = std(Schema.Struct({ ticket: Schema.String }))
const BatchSubmittedRow = std(
  Schema.Struct({
    req: Schema.Int,
    ...TicketFields,
    ownerId: NullableString,
    ownerEpoch: NullableInt,
    ownerExpired: Schema.NullOr(Schema.Boolean),
  }),
)
/** The held leases, and a delivered ticket per row (all null when none was). */
const DeliveredRow = std(
  Schema.Struct({
    held: Schema.Array(Schema.String),
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
    createdAt: NullableInt,
  }),
)
const CountRow = std(Schema.Struct({ sessionId: Schema.String, count: Schema.Int }))
const StateRow = std(Schema.Struct({ state: TicketState }))
const CancelRow = std(
  Schema.Struct({
    ticket: Schema.String,
    outcome: Schema.Literals(["cancelled", "requested", "closed", "unknown"]),
    peerId: NullableString,
    state: Schema.NullOr(TicketState),
    sessionId: NullableString,
    ownerId: NullableString,
    epoch: NullableInt,
    expired: Schema.NullOr(Schema.Boolean),
  }),
)
const CancelRequestRow = std(
  Schema.Struct({ ticket: Schema.String, state: TicketState, reason: NullableString }),
)
const TicketInfoRow = std(
  Schema.Struct({
    ticket: Schema.String,
    peerId: Schema.String,
    name: Schema.String,
    state: TicketState,
    closeReason: NullableString,
    cancelReason: NullableString,
    status: Schema.NullOr(ResultStatus),
    exitCode: NullableInt,
    output: NullableString,
    truncated: Schema.NullOr(Schema.Boolean),
  }),
)

/** `now()` less `ms` as a timestamptz, for an index range (clamped to some 300 years either way). */
const msAgo = (ms: number) =>
  sql.fragment`to_timestamp(extract(epoch from now()) - ${Math.max(-1e13, Math.min(ms, 1e13))}::float8 / 1000)`

/** A ticket (alias `t`) that no open session carries. */
const stray = (alias: string) =>
  sql.fragment`(${sql.identifier([alias, "session_id"])} is null or not exists (
    select 1 from sessions o where o.session_id = ${sql.identifier([alias, "session_id"])} and o.closed_at is null))`

const QueuedRow = std(Schema.Struct({ ...TicketFields, adopted: Schema.Boolean }))

/** Ticket ids are numbers in text, drawn from one sequence: the longer, or else the greater, is newer. */
const newer = (ticket: string, than: string) =>
  ticket.length !== than.length ? ticket.length > than.length : ticket > than
const min = (a: string | undefined, b: string) => (a === undefined || newer(a, b) ? b : a)

/** The TicketStore over a slonik pool. */
export const makePgTickets = (pool: DatabasePool): TicketStoreService => {
  // Deliveries asked for in the same turn of the event loop (every session that sends its next
  // jobs after one batch of results, say) are marked in one statement: one round trip, not one per
  // session. Each lease is still checked and locked on its own.
  let deliveries: Array<{
    readonly lease: { readonly sessionId: string; readonly epoch: number }
    readonly tickets: ReadonlyArray<string>
    readonly resolve: (marked: ReadonlyArray<Ticket>) => void
    readonly reject: (error: unknown) => void
  }> = []
  let submissions: Array<{
    readonly entry: {
      readonly peerId: string
      readonly serverId: string
      readonly jobs: ReadonlyArray<SubmittedJob>
    }
    readonly resolve: (submitted: { tickets: ReadonlyArray<Ticket>; owner: SessionOwner | undefined }) => void
    readonly reject: (error: unknown) => void
  }> = []
  // Reads of queued tickets asked for in the same turn (every session told of a run across the
  // fleet, say) share one statement. Each is still asked by its session's actor, between its other
  // commands, so what it reads is never older than what the actor has settled.
  let reads: Array<{
    readonly sessionId: string
    readonly after: string | undefined
    readonly resolve: (tickets: ReadonlyArray<Ticket>) => void
    readonly reject: (error: unknown) => void
  }> = []
  const flushReads = async () => {
    const batch = reads
    reads = []
    try {
      // Per session the oldest `after` asked ('' for all); each read then keeps its own.
      const after = new Map<string, string>()
      for (const r of batch) after.set(r.sessionId, min(after.get(r.sessionId), r.after ?? ""))
      // The peer's queued tickets no open session carries become the session's first, and come
      // back beside its own (the statement's snapshot shows them under their old session, so never
      // twice), whatever their ids.
      const rows = await pool.any(sql.prepared("queued tickets", QueuedRow)`
        with req as (
          select * from ${sql.unnest([...after], ["uuid", "text"])} as r(session_id, after)
        ), adopted as (
          update tickets t set session_id = s.session_id
          from sessions s
          where s.session_id in (select session_id from req) and s.closed_at is null
            and t.peer_id = s.peer_id and t.finished_at is null and t.state = 'queued' and ${stray("t")}
          returning t.*
        )
        select ${ticketColumns}, adopted from (
          select t.*, false as adopted from tickets t join req r on r.session_id = t.session_id
          where t.finished_at is null and t.state = 'queued'
            and (length(t.ticket), t.ticket) > (length(r.after), r.after)
          union all
          select *, true from adopted
        ) q
        order by ${ticketOrder}
      `)
      // By session first: a run to ten thousand peers is ten thousand reads of one row each.
      const bySession = Map.groupBy(rows, (row) => row.sessionId)
      for (const { sessionId, after, resolve } of batch)
        resolve(
          (bySession.get(sessionId) ?? [])
            .filter((t) => t.adopted || after === undefined || newer(t.ticket, after))
            .map(({ adopted: _adopted, ...ticket }) => ticket),
        )
    } catch (error) {
      for (const { reject } of batch) reject(error)
    }
  }
  const flushSubmissions = async () => {
    const batch = submissions
    submissions = []
    try {
      // Each peer's open session (if any) is locked for share, so a login replacing it waits for
      // these tickets and then carries them over. Ticket ids are drawn in the order of the
      // submissions and their jobs, so each submission's tickets are in its order.
      const rows = await pool.any(sql.prepared("submit tickets", BatchSubmittedRow)`
        with req as (
          select * from ${sql.unnest(
            batch.flatMap(({ entry }, r) =>
              entry.jobs.map((job, i) => [
                r,
                i,
                entry.peerId,
                entry.serverId,
                job.name,
                job.command,
                job.timeoutMs,
              ]),
            ),
            ["int4", "int4", "text", "text", "text", "text", "int4"],
          )} as j(req, ord, peer_id, server_id, name, command, timeout_ms)
        ), peer as (
          select p.peer_id, p.os, p.distro from peers p
          where p.peer_id = any(array(select distinct peer_id from req))
        ), owner as (
          select o.* from (select distinct peer_id from req) rp
          cross join lateral (
            select s.peer_id, s.session_id, s.owner_id, s.epoch, ${ownerLost("s")} as expired from sessions s
            where s.peer_id = rp.peer_id and s.closed_at is null
            order by s.opened_at desc limit 1
            for share of s
          ) o
        ), numbered as (
          select nextval('ticket_seq')::text as ticket, x.* from (
            select j.*, p.os, p.distro from req j join peer p on p.peer_id = j.peer_id order by j.req, j.ord
          ) x
        ), inserted as (
          insert into tickets (ticket, peer_id, session_id, job_name, os, distro, command, timeout_ms, server_id)
          select n.ticket, n.peer_id, o.session_id, n.name, coalesce(n.os, ''), coalesce(n.distro, ''),
            n.command, n.timeout_ms, n.server_id
          from numbered n left join owner o on o.peer_id = n.peer_id
          returning *
        )
        select n.req, i.ticket, i.peer_id as "peerId", i.session_id::text as "sessionId", i.job_id as "jobId",
          i.job_name as "name", i.os, i.distro, i.command, i.timeout_ms as "timeoutMs", i.state, i.attempts,
          i.delivered_at as "deliveredAt", i.created_at as "createdAt", o.owner_id as "ownerId",
          o.epoch as "ownerEpoch",
          o.expired as "ownerExpired"
        from inserted i join numbered n on n.ticket = i.ticket left join owner o on o.peer_id = i.peer_id
        order by n.req, n.ord
      `)
      const byRequest = new Map<number, Array<(typeof rows)[number]>>()
      for (const row of rows) byRequest.set(row.req, [...(byRequest.get(row.req) ?? []), row])
      for (const [r, { entry, resolve, reject }] of batch.entries()) {
        const mine = byRequest.get(r) ?? []
        const [first] = mine
        if (first === undefined) {
          reject(new Error(`no peer ${entry.peerId} has ever registered`))
          continue
        }
        const owner =
          first.sessionId &&
          first.ownerId !== null &&
          first.ownerEpoch !== null &&
          first.ownerExpired !== null
            ? {
                sessionId: first.sessionId,
                ownerId: first.ownerId,
                epoch: first.ownerEpoch,
                expired: first.ownerExpired,
              }
            : undefined
        resolve({
          tickets: mine.map(
            ({ req: _r, ownerId: _o, ownerEpoch: _e, ownerExpired: _x, ...ticket }) => ticket,
          ),
          owner,
        })
      }
    } catch (error) {
      for (const { reject } of batch) reject(error)
    }
  }
  const flushDeliveries = async () => {
    const batch = deliveries
    deliveries = []
    try {
      const rows = await pool.any(sql.prepared("mark delivered", DeliveredRow)`
        with req as (
          select * from ${sql.unnest(
            batch.flatMap(({ lease, tickets }) =>
              [null, ...tickets].map((ticket) => [lease.sessionId.toLowerCase(), lease.epoch, ticket]),
            ),
            ["uuid", "int4", "text"],
          )} as r(session_id, epoch, ticket)
        ), held as (
          select s.session_id, s.epoch from sessions s
          where s.session_id in (select session_id from req) and s.closed_at is null
          order by s.session_id
          for share
        ), marked as (
          update tickets t set state = 'delivered', delivered_at = now(), attempts = t.attempts + 1
          from req r join held h on h.session_id = r.session_id and h.epoch = r.epoch
          where t.ticket = r.ticket and t.session_id = r.session_id and t.state in ('queued', 'delivered')
          returning t.*
        )
        -- The mark is not what keeps a ticket safe (a ticket sent again runs once: the peer keeps what
        -- it started), so its commit does not wait for the WAL to reach the disk: a crash loses at
        -- most marks no later commit flushed, as if it came between the send and the mark.
        select
          coalesce((select array_agg(session_id::text || '/' || epoch) from held), '{}') as held,
          ${ticketColumns}
        from (select set_config('synchronous_commit', 'off', true)) as one left join marked on true
      `)
      const held = new Set(rows[0]?.held ?? [])
      const marked = new Map<string, Ticket>()
      for (const { held: _held, ...t } of rows) {
        const { ticket, peerId, name, os, distro, command, timeoutMs, state, attempts, createdAt, ...rest } =
          t
        if (ticket === null || peerId === null || name === null || os === null || distro === null) continue
        if (command === null || timeoutMs === null || state === null || attempts === null) continue
        marked.set(ticket, {
          ...rest,
          ticket,
          peerId,
          name,
          os,
          distro,
          command,
          timeoutMs,
          state,
          attempts,
          ...(createdAt === null ? {} : { createdAt }),
        })
      }
      for (const { lease, tickets, resolve, reject } of batch) {
        if (!held.has(`${lease.sessionId.toLowerCase()}/${lease.epoch}`)) {
          reject(new Fenced(lease))
          continue
        }
        resolve([...new Set(tickets)].flatMap((id) => marked.get(id) ?? []))
      }
    } catch (error) {
      for (const { reject } of batch) reject(error)
    }
  }

  /** Cancels these tickets (one statement; see cancelTickets), over a pool or a transaction. */
  const cancelIn = async (
    db: CommonQueryMethods,
    ids: ReadonlyArray<string>,
    why: string,
  ): Promise<ReadonlyArray<CancelOutcome>> => {
    if (ids.length === 0) return []
    // The tickets locked (a result recorded at the same time waits, or wins and the ticket keeps
    // its real outcome), each judged against its session, then the update.
    const rows = await db.any(sql.type(CancelRow)`
          with req as (
            select * from unnest(${sql.array([...ids], "text")}::text[]) with ordinality as r(ticket, ord)
          ), locked as (
            select t.ticket, t.peer_id, t.session_id, t.state from tickets t
            where t.ticket = any(${sql.array([...ids], "text")})
            order by t.ticket
            for update of t
          ), owner as (
            select s.session_id, s.owner_id, s.epoch, ${ownerLost("s")} as expired from sessions s
            where s.session_id = any(array(select session_id from locked)) and s.closed_at is null
          ), judged as (
            select r.ord, r.ticket, l.peer_id, l.state, o.session_id, o.owner_id, o.epoch, o.expired,
              case
                when l.ticket is null then 'unknown'
                when l.state not in ('pending', 'queued', 'delivered') then 'closed'
                when l.state = 'delivered' and o.session_id is not null then 'requested'
                else 'cancelled'
              end as outcome
            from req r left join locked l on l.ticket = r.ticket left join owner o on o.session_id = l.session_id
          ), updated as (
            update tickets t set
              state = case when j.outcome = 'cancelled' then 'cancelled' else t.state end,
              finished_at = case when j.outcome = 'cancelled' then now() else t.finished_at end,
              close_reason = case when j.outcome = 'cancelled' then ${why} else t.close_reason end,
              cancel_requested_at = case when j.outcome = 'requested' then now() else t.cancel_requested_at end,
              cancel_reason = case when j.outcome = 'requested' then ${why} else t.cancel_reason end
            from judged j
            where t.ticket = j.ticket and j.outcome in ('cancelled', 'requested')
          )
          select j.ticket, j.outcome, j.peer_id as "peerId", j.state, j.session_id::text as "sessionId",
            j.owner_id as "ownerId", j.epoch, j.expired
          from judged j order by j.ord
        `)
    return rows.map((row): CancelOutcome => {
      const owner =
        row.sessionId !== null && row.ownerId !== null && row.epoch !== null && row.expired !== null
          ? { sessionId: row.sessionId, ownerId: row.ownerId, epoch: row.epoch, expired: row.expired }
          : undefined
      if (row.outcome === "unknown" || row.peerId === null || row.state === null)
        return { ticket: row.ticket, outcome: "unknown" }
      if (row.outcome === "closed")
        return { ticket: row.ticket, outcome: "closed", peerId: row.peerId, state: row.state }
      if (row.outcome === "requested" && owner !== undefined)
        return { ticket: row.ticket, outcome: "requested", peerId: row.peerId, owner }
      return { ticket: row.ticket, outcome: "cancelled", peerId: row.peerId, owner }
    })
  }

  return TicketStore.of({
    createTickets: (entry) =>
      attempt("createTickets", async () => {
        if (entry.jobs.length === 0) return []
        return pool.transaction((tx) =>
          tx.any(sql.type(TicketRow)`
            with inserted as (
              insert into tickets (peer_id, session_id, job_id, job_name, os, distro, command, timeout_ms, server_id)
              select ${entry.peerId}, ${entry.sessionId}::uuid, j.job_id, j.name, j.os, j.distro, j.command,
                j.timeout_ms, ${entry.serverId}
              from ${sql.unnest(
                entry.jobs.map((job, i) => [
                  i,
                  job.job_id,
                  job.name,
                  job.os,
                  job.distro,
                  job.command,
                  job.timeout_ms,
                ]),
                ["int4", "text", "text", "text", "text", "text", "int4"],
              )} as j(ord, job_id, name, os, distro, command, timeout_ms)
              order by j.ord
              returning *
            )
            select ${ticketColumns} from inserted order by ${ticketOrder}
          `),
        )
      }),

    submitTickets: (entry) =>
      attempt("submitTickets", async () => {
        if (entry.jobs.length === 0) {
          const owner = await pool.maybeOne(sql.type(OwnerRow)`
            select s.session_id::text as "sessionId", s.owner_id as "ownerId", s.epoch, ${ownerLost("s")} as "expired"
            from sessions s where s.peer_id = ${entry.peerId} and s.closed_at is null
            order by s.opened_at desc limit 1
          `)
          return { tickets: [], owner: owner ?? undefined }
        }
        // Submissions made close together (in one turn of the event loop: a tool submitting to many
        // peers at once) share one statement, and one commit.
        return await new Promise<{ tickets: ReadonlyArray<Ticket>; owner: SessionOwner | undefined }>(
          (resolve, reject) => {
            if (submissions.length === 0) setImmediate(() => void flushSubmissions())
            submissions.push({ entry, resolve, reject })
          },
        )
      }),

    queuedTickets: (sessionId, after) =>
      attempt("queuedTickets", () =>
        UUID.test(sessionId)
          ? new Promise<ReadonlyArray<Ticket>>((resolve, reject) => {
              reads.push({ sessionId: sessionId.toLowerCase(), after, resolve, reject })
              if (reads.length === 1) setImmediate(flushReads)
            })
          : Promise.resolve([]),
      ),

    queuedCounts: (sessionIds) =>
      attempt("queuedCounts", async () => {
        const valid = [...new Set(sessionIds.filter((id) => UUID.test(id)).map((id) => id.toLowerCase()))]
        if (valid.length === 0) return new Map()
        // Its own queued tickets, and those of its peer that no open session carries (a submission
        // that raced a login replacing the session it named): the holder picks those up too.
        const rows = await pool.any(sql.type(CountRow)`
          select s.session_id::text as "sessionId", count(*)::int as count
          from sessions s
          join tickets t on t.peer_id = s.peer_id and t.finished_at is null and t.state = 'queued'
          where s.session_id = any(${sql.array(valid, "uuid")}) and s.closed_at is null
            and (t.session_id = s.session_id or ${stray("t")})
          group by s.session_id
        `)
        return new Map(rows.map((r) => [r.sessionId, r.count]))
      }),

    markDelivered: (lease, tickets) =>
      fenced(
        "markDelivered",
        () =>
          new Promise<ReadonlyArray<Ticket>>((resolve, reject) => {
            if (!UUID.test(lease.sessionId)) return reject(new Fenced(lease))
            deliveries.push({ lease, tickets, resolve, reject })
            if (deliveries.length === 1) setImmediate(flushDeliveries)
          }),
      ),

    expireTickets: (entry) =>
      attempt("expireTickets", async () => {
        if (Number.isNaN(entry.deliveryDeadlineMs) || Number.isNaN(entry.executionSlackMs)) {
          return { undeliverable: 0, timedOut: 0 }
        }
        const undeliverable = await pool.anyFirst(sql.type(TicketIdRow)`
          update tickets set state = 'undeliverable', finished_at = now()
          where finished_at is null and state = 'queued'
            and created_at < ${msAgo(entry.deliveryDeadlineMs)}
            -- A run's tickets wait for their run's deadline instead (see sweepRuns).
            and run_id is null
          returning ticket
        `)
        // A delivered ticket of an open session is its owner's to re-send or give up. One sent
        // after it was created is due no sooner than the slack after that: the bound reads the
        // open tickets' index by created_at (none is kept by delivered_at, so a delivery stays HOT).
        const timedOut = await pool.anyFirst(sql.type(TicketIdRow)`
          update tickets t set state = 'timed_out', finished_at = now()
          where t.finished_at is null and t.state = 'delivered'
            and t.created_at < ${msAgo(entry.executionSlackMs)}
            and extract(epoch from t.delivered_at) * 1000 + 2.0 * t.timeout_ms + ${entry.executionSlackMs}::float8
              < extract(epoch from now()) * 1000
            and not exists (
              select 1 from sessions s where s.session_id = t.session_id and s.closed_at is null
            )
          returning ticket
        `)
        return { undeliverable: undeliverable.length, timedOut: timedOut.length }
      }),

    closeTickets: (ids, state, reason, peerId) =>
      isTerminal(state)
        ? attempt("closeTickets", async () => {
            if (ids.length === 0) return []
            const closed = await pool.any(sql.type(TicketIdRow)`
              update tickets set state = ${state}, finished_at = now(), close_reason = ${reason ?? null}
              where ticket = any(${sql.array([...ids], "text")}) and finished_at is null
                and state in ('pending', 'queued', 'delivered')
                and (${peerId ?? null}::text is null or peer_id = ${peerId ?? null})
              returning ticket
            `)
            return closed.map((row) => row.ticket)
          })
        : Effect.fail(
            new StoreError({
              operation: "closeTickets",
              message: `${state} is not a terminal ticket state`,
              kind: "rejected",
            }),
          ),

    cancelTickets: ({ tickets: given, by, reason }) =>
      attempt("cancelTickets", () => cancelIn(pool, [...new Set(given)], cancelReasonOf(by, reason))),

    cancelRun: ({ runId, by, reason }) =>
      attempt("cancelRun", () =>
        pool.transaction(async (tx) => {
          // The run locked first, as an advance locks it: no pending ticket of it is let go meanwhile.
          const run = await tx.maybeOne(
            sql.type(TicketIdRow)`select run_id as ticket from runs where run_id = ${runId} for update`,
          )
          if (run === null) return Option.none()
          const open = await tx.anyFirst(sql.type(TicketIdRow)`
            select ticket from tickets where run_id = ${runId} and finished_at is null
            order by length(ticket), ticket
          `)
          return Option.some(await cancelIn(tx, open, cancelReasonOf(by, reason)))
        }),
      ),

    cancelRequests: (sessionId, ids) =>
      attempt("cancelRequests", async () =>
        UUID.test(sessionId) && ids.length > 0
          ? pool.any(sql.type(CancelRequestRow)`
              select ticket, state,
                coalesce(cancel_reason, case when state = 'cancelled' then close_reason end) as reason
              from tickets
              where ticket = any(${sql.array([...ids], "text")}) and session_id = ${sessionId}::uuid
            `)
          : [],
      ),

    ticketInfo: (ticket) =>
      attempt("ticketInfo", async () => {
        const row = await pool.maybeOne(sql.type(TicketInfoRow)`
          select t.ticket, t.peer_id as "peerId", t.job_name as "name", t.state, t.close_reason as "closeReason",
            t.cancel_reason as "cancelReason", r.status, r.exit_code as "exitCode", r.output, r.truncated
          from tickets t left join job_results r on r.ticket = t.ticket
          where t.ticket = ${ticket}
        `)
        if (row === null) return Option.none()
        const { status, exitCode, output, truncated, ...rest } = row
        return Option.some({
          ...rest,
          result:
            status === null || output === null
              ? undefined
              : { status, exitCode, output, truncated: truncated ?? false },
        })
      }),

    ticketState: (ticket) =>
      attempt("ticketState", async () => {
        const row = await pool.maybeOne(
          sql.type(StateRow)`select state from tickets where ticket = ${ticket}`,
        )
        return row === null ? Option.none() : Option.some(row.state)
      }),
  })
}
