import {
  ANY_PLATFORM,
  CatalogJob,
  isTerminal,
  LeaseLost,
  Protocol,
  ResultStatus,
  Store,
  StoreError,
  type Ticket,
  TicketState,
  ticketStateOf,
} from "@picus/core"
import { Effect, Layer, Option, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { type MigrationError, migrate } from "./migrate.ts"
import { classifyError, describeError, makePool, type PoolError, type PoolOptions } from "./pool.ts"

// Row schemas. Columns are aliased in SQL to the Store's field names, so the validated row is the
// value the Store returns.
const std = Schema.toStandardSchemaV1
const NullableString = Schema.NullOr(Schema.String)
const NullableInt = Schema.NullOr(Schema.Int)

const NoRow = std(Schema.Struct({}))
const TokenRow = std(
  Schema.Struct({
    tokenId: Schema.Int,
    name: Schema.String,
    prefix: Schema.String,
    createdAt: Schema.Int,
    revokedAt: NullableInt,
  }),
)
const TicketIdRow = std(Schema.Struct({ ticket: Schema.String }))
const TokenIdRow = std(Schema.Struct({ tokenId: Schema.Int }))
const LogIdRow = std(Schema.Struct({ id: Schema.Int }))
const CatalogJobRow = std(CatalogJob)
const TicketFields = {
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
}
const TicketRow = std(Schema.Struct(TicketFields))
const SessionIdRow = std(Schema.Struct({ sessionId: Schema.String }))
const TakenRow = std(
  Schema.Struct({
    sessionId: Schema.String,
    peerId: Schema.String,
    epoch: Schema.Int,
    os: NullableString,
    distro: NullableString,
    fromServerId: Schema.String,
    heartbeats: Schema.Boolean,
  }),
)
const OwnerRow = std(
  Schema.Struct({
    sessionId: Schema.String,
    ownerId: Schema.String,
    epoch: Schema.Int,
    expired: Schema.Boolean,
  }),
)
const SubmittedRow = std(
  Schema.Struct({
    ...TicketFields,
    ownerId: NullableString,
    ownerEpoch: NullableInt,
    ownerExpired: Schema.NullOr(Schema.Boolean),
  }),
)
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
  }),
)
const KeyRow = std(Schema.Struct({ key: Schema.Uint8Array }))
const CountRow = std(Schema.Struct({ sessionId: Schema.String, count: Schema.Int }))
const ServerIdRow = std(Schema.Struct({ serverId: Schema.String }))
const InstanceRow = std(
  Schema.Struct({ aliveAgoMs: Schema.Finite, stopped: Schema.Boolean, beat: Schema.String }),
)
const StateRow = std(Schema.Struct({ state: TicketState }))
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

/** Serialises catalog replacements (a transaction-scoped advisory lock). */
const CATALOG_LOCK_KEY = 7_313_526_417_002
const BIGINT_MAX = 9_223_372_036_854_775_807n
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

const ticketColumns = sql.fragment`
  ticket, peer_id as "peerId", session_id::text as "sessionId", job_id as "jobId", job_name as "name", os,
  distro, command, timeout_ms as "timeoutMs", state, attempts, delivered_at as "deliveredAt"
`
/** Oldest first; ticket ids are numbers in text, so the shorter one is older. */
const ticketOrder = sql.fragment`created_at, length(ticket), ticket`

/** `now()` plus a lease, as a timestamptz. */
const leaseEnd = (leaseMs: number) => sql.fragment`now() + ${leaseMs}::float8 * interval '1 millisecond'`

const tokenColumns = sql.fragment`
  token_id as "tokenId", name, prefix, created_at as "createdAt", revoked_at as "revokedAt"
`

/** A row limit PostgreSQL accepts: NaN and negatives read nothing, Infinity reads everything. */
const limitOf = (limit: number): number | null =>
  Number.isNaN(limit) ? 0 : limit === Number.POSITIVE_INFINITY ? null : Math.max(0, Math.trunc(limit))

/** Runs a query, mapping any failure to a StoreError naming the operation. */
const attempt = <A>(operation: string, run: () => Promise<A>): Effect.Effect<A, StoreError> =>
  Effect.tryPromise({
    try: run,
    catch: (error) => storeError(operation, error),
  }).pipe(Effect.withSpan(`PgStore.${operation}`))

/** A failed query as a StoreError that keeps its cause and says whether a retry may help. */
const storeError = (operation: string, error: unknown) =>
  new StoreError({ operation, message: describeError(error), kind: classifyError(error), cause: error })

/** As `attempt`, for writes fenced by a session's epoch. */
const fenced = <A>(operation: string, run: () => Promise<A>): Effect.Effect<A, StoreError | LeaseLost> =>
  Effect.tryPromise({
    try: run,
    catch: (error) => (error instanceof Fenced ? new LeaseLost(error.lease) : storeError(operation, error)),
  }).pipe(Effect.withSpan(`PgStore.${operation}`))

/** Thrown inside a transaction to roll it back and fail the call with LeaseLost. */
class Fenced extends Error {
  readonly lease: { readonly sessionId: string; readonly epoch: number }
  constructor(lease: { readonly sessionId: string; readonly epoch: number }) {
    super("lease lost")
    this.lease = lease
  }
}

/** The Store over a slonik pool. */
export const makePgStore = (pool: DatabasePool): Store["Service"] => {
  // Deliveries asked for in the same turn of the event loop (every session that sends its next
  // jobs after one batch of results, say) are marked in one statement: one round trip, not one per
  // session. Each lease is still checked and locked on its own.
  let deliveries: Array<{
    readonly lease: { readonly sessionId: string; readonly epoch: number }
    readonly tickets: ReadonlyArray<string>
    readonly resolve: (marked: ReadonlyArray<Ticket>) => void
    readonly reject: (error: unknown) => void
  }> = []
  const flushDeliveries = async () => {
    const batch = deliveries
    deliveries = []
    try {
      const rows = await pool.any(sql.type(DeliveredRow)`
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
        select
          coalesce((select array_agg(session_id::text || '/' || epoch) from held), '{}') as held,
          ${ticketColumns}
        from (select 1) as one left join marked on true
      `)
      const held = new Set(rows[0]?.held ?? [])
      const marked = new Map<string, Ticket>()
      for (const { held: _held, ...t } of rows) {
        const { ticket, peerId, name, os, distro, command, timeoutMs, state, attempts } = t
        if (ticket === null || peerId === null || name === null || os === null || distro === null) continue
        if (command === null || timeoutMs === null || state === null || attempts === null) continue
        marked.set(ticket, { ...t, ticket, peerId, name, os, distro, command, timeoutMs, state, attempts })
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

  const store: Store["Service"] = Store.of({
    createToken: (token) =>
      attempt("createToken", () =>
        pool.one(sql.type(TokenRow)`
          insert into tokens (name, prefix, token_hash)
          values (${token.name}, ${token.prefix}, ${sql.binary(Buffer.from(token.hash))})
          returning ${tokenColumns}
        `),
      ),

    listTokens: attempt("listTokens", () =>
      pool.any(sql.type(TokenRow)`select ${tokenColumns} from tokens order by token_id`),
    ),

    revokeToken: (idOrPrefix) =>
      attempt("revokeToken", async () => {
        const byId = /^\d+$/.test(idOrPrefix)
        if (byId && BigInt(idOrPrefix) > BIGINT_MAX) return 0
        const match = byId
          ? sql.fragment`token_id = ${idOrPrefix}::bigint`
          : sql.fragment`prefix = ${idOrPrefix}`
        const revoked = await pool.any(sql.type(TokenIdRow)`
          update tokens set revoked_at = now()
          where ${match} and revoked_at is null
          returning token_id as "tokenId"
        `)
        return revoked.length
      }),

    findActiveToken: (hash) =>
      attempt("findActiveToken", async () =>
        Option.fromNullOr(
          await pool.maybeOne(sql.type(TokenRow)`
            select ${tokenColumns} from tokens
            where token_hash = ${sql.binary(Buffer.from(hash))} and revoked_at is null
          `),
        ),
      ),

    replaceCatalog: (jobs) =>
      attempt("replaceCatalog", () => {
        // One row per job id (the last one given wins), in a stable order.
        const unique = [...new Map(jobs.map((job) => [job.job_id, job])).values()].sort((a, b) =>
          a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : 0,
        )
        return pool.transaction(async (tx) => {
          await tx.query(sql.type(NoRow)`select pg_advisory_xact_lock(${CATALOG_LOCK_KEY})`)
          if (unique.length > 0) {
            await tx.query(sql.type(NoRow)`
              insert into jobs (job_id, name, os, distro, command, timeout_ms)
              select * from ${sql.unnest(
                unique.map((job) => [job.job_id, job.name, job.os, job.distro, job.command, job.timeout_ms]),
                ["text", "text", "text", "text", "text", "int4"],
              )}
              on conflict (job_id) do update set
                name = excluded.name, os = excluded.os, distro = excluded.distro, command = excluded.command,
                timeout_ms = excluded.timeout_ms, enabled = true, updated_at = now()
              where (jobs.name, jobs.os, jobs.distro, jobs.command, jobs.timeout_ms, jobs.enabled)
                is distinct from
                (excluded.name, excluded.os, excluded.distro, excluded.command, excluded.timeout_ms, true)
            `)
          }
          await tx.query(sql.type(NoRow)`
            update jobs set enabled = false, updated_at = now()
            where enabled and not (job_id = any(${sql.array(
              unique.map((job) => job.job_id),
              "text",
            )}))
          `)
        })
      }),

    jobsFor: (os, distro) =>
      attempt("jobsFor", () =>
        pool.any(sql.type(CatalogJobRow)`
          select job_id, name, os, distro, command, timeout_ms from jobs
          where enabled and (os = ${ANY_PLATFORM} or os = ${os}) and (distro = ${ANY_PLATFORM} or distro = ${distro})
          order by job_id
        `),
      ),

    sessionKey: (proposed) =>
      attempt("sessionKey", async () => {
        await pool.query(sql.type(NoRow)`
          insert into cluster_keys (name, key) values ('session', ${sql.binary(Buffer.from(proposed))})
          on conflict (name) do nothing
        `)
        const { key } = await pool.one(sql.type(KeyRow)`select key from cluster_keys where name = 'session'`)
        return new Uint8Array(key)
      }),

    login: (login) =>
      attempt("login", () =>
        pool.transaction(async (tx) => {
          await tx.query(sql.type(NoRow)`
            insert into peers (peer_id, os, distro, hostname, agent_version)
            values (${login.peerId}, ${login.os}, ${login.distro}, ${login.hostname}, ${login.agentVersion})
            on conflict (peer_id) do update set
              os = excluded.os, distro = excluded.distro, hostname = excluded.hostname,
              agent_version = excluded.agent_version, last_seen_at = now()
          `)
          // The peer's older sessions end here; moving their epoch on fences whoever holds them.
          await tx.query(sql.type(NoRow)`
            with replaced as (
              update sessions set closed_at = now(), epoch = epoch + 1
              where peer_id = ${login.peerId} and closed_at is null
              returning session_id
            )
            insert into registration_log (event, peer_id, session_id, reason, server_id)
            select 'logout', ${login.peerId}, session_id, ${Protocol.LogoutReason.replaced}, ${login.serverId}
            from replaced order by session_id
            on conflict (session_id) where event = 'logout' do nothing
          `)
          await tx.query(sql.type(NoRow)`
            insert into sessions (session_id, peer_id, os, distro, owner_id, lease_until)
            values (${login.sessionId}::uuid, ${login.peerId}, ${login.os}, ${login.distro}, ${login.serverId}, ${leaseEnd(login.leaseMs)})
          `)
          await tx.query(sql.type(NoRow)`
            insert into registration_log (event, peer_id, session_id, server_id, server_ip)
            values ('login', ${login.peerId}, ${login.sessionId}::uuid, ${login.serverId}, ${login.serverIp})
          `)
          const adopted = await tx.any(sql.type(TicketRow)`
            with adopted as (
              update tickets set session_id = ${login.sessionId}::uuid
              where peer_id = ${login.peerId} and state in ('queued', 'delivered')
              returning *
            )
            select ${ticketColumns} from adopted order by ${ticketOrder}
          `)
          return { epoch: 1, adopted }
        }),
      ),

    logRejected: (entry) =>
      attempt("logRejected", async () => {
        await pool.query(sql.type(NoRow)`
          insert into registration_log (event, peer_id, reason, server_id, server_ip)
          values ('rejected', ${entry.peerId}, ${entry.reason}, ${entry.serverId}, ${entry.serverIp})
        `)
      }),

    logout: (entry) =>
      attempt("logout", async () => {
        if (!UUID.test(entry.sessionId)) return false
        const row = await pool.maybeOne(sql.type(LogIdRow)`
          with closed as (
            update sessions set closed_at = now()
            where session_id = ${entry.sessionId}::uuid and epoch = ${entry.epoch} and closed_at is null
            returning session_id
          )
          insert into registration_log (event, peer_id, session_id, reason, server_id)
          select 'logout', ${entry.peerId}, session_id, ${entry.reason}, ${entry.serverId} from closed
          on conflict (session_id) where event = 'logout' do nothing
          returning id
        `)
        return row !== null
      }),

    logShutdown: (entry) =>
      attempt("logShutdown", async () => {
        await pool.query(sql.type(NoRow)`
          insert into registration_log (event, reason, server_id)
          values ('shutdown', ${entry.reason}, ${entry.serverId})
        `)
      }),

    instanceAlive: (serverId) =>
      attempt("instanceAlive", async () => {
        // An instance that had stopped cleanly and says it is alive again has restarted.
        await pool.query(sql.type(NoRow)`
          insert into server_instances (server_id) values (${serverId})
          on conflict (server_id) do update set
            alive_at = now(),
            stopped_at = null,
            started_at = case when server_instances.stopped_at is null
              then server_instances.started_at else now() end
        `)
      }),

    instanceStopped: (serverId) =>
      attempt("instanceStopped", async () => {
        await pool.query(sql.type(NoRow)`
          insert into server_instances (server_id, stopped_at) values (${serverId}, now())
          on conflict (server_id) do update set stopped_at = now()
        `)
      }),

    instanceStatus: (serverId) =>
      attempt("instanceStatus", async () =>
        Option.fromNullishOr(
          await pool.maybeOne(sql.type(InstanceRow)`
            select greatest(0, extract(epoch from now() - alive_at) * 1000)::float8 as "aliveAgoMs",
              stopped_at is not null as stopped,
              -- Full microseconds: two keep-alives never share a value.
              alive_at::text as beat
            from server_instances where server_id = ${serverId}
          `),
        ),
      ),

    lostInstances: (entry) =>
      attempt("lostInstances", async () => {
        // NaN would compare above every number in PostgreSQL (and so call every instance lost).
        if (Number.isNaN(entry.deadAfterMs)) return []
        return pool.anyFirst(sql.type(ServerIdRow)`
          select server_id as "serverId" from server_instances
          where stopped_at is null and server_id <> ${entry.byServerId}
            and extract(epoch from alive_at) * 1000 < extract(epoch from now()) * 1000 - ${entry.deadAfterMs}::float8
          order by server_id
        `)
      }),

    renewLeases: (entry) =>
      attempt("renewLeases", async () => {
        const held = entry.sessions.filter((l) => UUID.test(l.sessionId))
        if (held.length === 0) return []
        const renewed = new Set(
          await pool.anyFirst(sql.type(SessionIdRow)`
            update sessions s set lease_until = ${leaseEnd(entry.leaseMs)}
            from ${sql.unnest(
              held.map((l) => [l.sessionId, l.epoch]),
              ["uuid", "int4"],
            )} as l(session_id, epoch)
            where s.session_id = l.session_id and s.epoch = l.epoch
              and s.owner_id = ${entry.serverId} and s.closed_at is null
            returning s.session_id::text as "sessionId"
          `),
        )
        return [...new Set(entry.sessions.map((l) => l.sessionId))].filter((id) =>
          renewed.has(id.toLowerCase()),
        )
      }),

    takeOverSessions: (entry) =>
      attempt("takeOverSessions", async () => {
        if (entry.sessionId !== undefined && !UUID.test(entry.sessionId)) return []
        const limit = limitOf(entry.limit)
        if (limit === 0) return []
        // Asked for one session by a message of its peer: the caller does not hold it in memory, so a
        // lease in the caller's own name is from an earlier run of it and may be taken back at once.
        const which =
          entry.sessionId === undefined
            ? sql.fragment`lease_until < now() and owner_id <> ${entry.serverId}`
            : sql.fragment`session_id = ${entry.sessionId}::uuid
                and (lease_until < now() or owner_id = ${entry.serverId})`
        return pool.transaction(async (tx) => {
          const taken = await tx.any(sql.type(TakenRow)`
            with candidates as (
              select session_id, owner_id from sessions
              where closed_at is null and ${which}
              order by lease_until
              limit ${limit}
              for update skip locked
            )
            update sessions s set owner_id = ${entry.serverId}, epoch = s.epoch + 1,
              lease_until = ${leaseEnd(entry.leaseMs)}
            from candidates c, peers p
            where s.session_id = c.session_id and p.peer_id = s.peer_id
            -- The peer's row is of its latest login, which is this open session's.
            returning s.session_id::text as "sessionId", s.peer_id as "peerId", s.epoch,
              s.os, s.distro, c.owner_id as "fromServerId", p.agent_version is not null as "heartbeats"
          `)
          if (taken.length === 0) return []
          const tickets = await tx.any(sql.type(TicketRow)`
            select ${ticketColumns} from tickets
            where session_id = any(${sql.array(
              taken.map((t) => t.sessionId),
              "uuid",
            )}) and state in ('queued', 'delivered')
            order by ${ticketOrder}
          `)
          return taken.map((t) => ({ ...t, tickets: tickets.filter((k) => k.sessionId === t.sessionId) }))
        })
      }),

    sessionOf: (peerId) =>
      attempt("sessionOf", async () =>
        Option.fromNullOr(
          await pool.maybeOne(sql.type(OwnerRow)`
            select session_id::text as "sessionId", owner_id as "ownerId", epoch,
              lease_until < now() as "expired"
            from sessions where peer_id = ${peerId} and closed_at is null
            order by opened_at desc limit 1
          `),
        ),
      ),

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
            select session_id::text as "sessionId", owner_id as "ownerId", epoch, lease_until < now() as "expired"
            from sessions where peer_id = ${entry.peerId} and closed_at is null
            order by opened_at desc limit 1
          `)
          return { tickets: [], owner: owner ?? undefined }
        }
        // One statement: the open session (if any) is locked for share, so a login replacing it
        // waits for these tickets and then carries them over.
        const rows = await pool.any(sql.type(SubmittedRow)`
          with peer as (
            select os, distro from peers where peer_id = ${entry.peerId}
          ), owner as (
            select session_id, owner_id, epoch, lease_until < now() as expired from sessions
            where peer_id = ${entry.peerId} and closed_at is null
            order by opened_at desc limit 1
            for share
          ), inserted as (
            insert into tickets (peer_id, session_id, job_name, os, distro, command, timeout_ms, server_id)
            select ${entry.peerId}, (select session_id from owner), j.name,
              coalesce((select os from peer), ''), coalesce((select distro from peer), ''),
              j.command, j.timeout_ms, ${entry.serverId}
            from ${sql.unnest(
              entry.jobs.map((job, i) => [i, job.name, job.command, job.timeoutMs]),
              ["int4", "text", "text", "int4"],
            )} as j(ord, name, command, timeout_ms)
            where exists (select 1 from peer)
            order by j.ord
            returning *
          )
          select ${ticketColumns}, (select owner_id from owner) as "ownerId",
            (select epoch from owner) as "ownerEpoch", (select expired from owner) as "ownerExpired"
          from inserted order by ${ticketOrder}
        `)
        if (rows.length === 0) throw new Error(`no peer ${entry.peerId} has ever registered`)
        const [first] = rows
        const owner =
          first?.sessionId &&
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
        return {
          tickets: rows.map(({ ownerId: _o, ownerEpoch: _e, ownerExpired: _x, ...ticket }) => ticket),
          owner,
        }
      }),

    queuedTickets: (sessionId) =>
      attempt("queuedTickets", async () =>
        UUID.test(sessionId)
          ? pool.any(sql.type(TicketRow)`
              select ${ticketColumns} from tickets
              where session_id = ${sessionId}::uuid and state = 'queued'
              order by ${ticketOrder}
            `)
          : [],
      ),

    queuedCounts: (sessionIds) =>
      attempt("queuedCounts", async () => {
        const valid = [...new Set(sessionIds.filter((id) => UUID.test(id)).map((id) => id.toLowerCase()))]
        if (valid.length === 0) return new Map()
        const rows = await pool.any(sql.type(CountRow)`
          select session_id::text as "sessionId", count(*)::int as count from tickets
          where session_id = any(${sql.array(valid, "uuid")}) and state = 'queued'
          group by session_id
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

    recordResult: (result) =>
      store
        .recordResults([result])
        .pipe(
          Effect.flatMap(([outcome]) =>
            outcome === "lease_lost" || outcome === undefined
              ? Effect.fail(new LeaseLost({ sessionId: result.sessionId, epoch: result.epoch }))
              : Effect.succeed(outcome),
          ),
        ),

    recordResults: (results) =>
      attempt("recordResults", async () => {
        if (results.length === 0) return []
        // One statement, so one round trip for a whole batch, with the same checks as recordIn: the
        // sessions' leases held at the results' epochs (locked against a takeover until commit),
        // the tickets locked, then one insert and one update. A copy recorded concurrently loses
        // on the primary key and is told `duplicate`.
        const rows = await pool.any(sql.type(OutcomeRow)`
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
          ), held as (
            select s.session_id, s.epoch from sessions s
            where s.session_id in (select session_id from input) and s.closed_at is null
            order by s.session_id
            for share
          ), locked as (
            select t.ticket, t.peer_id, t.session_id, t.state,
              exists (select 1 from job_results r where r.ticket = t.ticket) as has_result
            from tickets t
            where t.ticket in (select ticket from input)
            order by t.ticket
            for update
          ), checked as (
            select i.*,
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
            update tickets t set state = j.new_state, finished_at = now()
            from judged j
            where j.outcome = 'recorded' and t.ticket = j.ticket and t.ticket in (select ticket from inserted)
          )
          select ord,
            case when outcome = 'recorded' and ticket not in (select ticket from inserted) then 'duplicate'
              else outcome end as outcome
          from judged
          order by ord
        `)
        return rows.map((r) => r.outcome)
      }),

    expireTickets: (entry) =>
      attempt("expireTickets", async () => {
        if (Number.isNaN(entry.deliveryDeadlineMs) || Number.isNaN(entry.executionSlackMs)) {
          return { undeliverable: 0, timedOut: 0 }
        }
        const undeliverable = await pool.anyFirst(sql.type(TicketIdRow)`
          update tickets set state = 'undeliverable', finished_at = now()
          where state = 'queued'
            and extract(epoch from created_at) * 1000
              < extract(epoch from now()) * 1000 - ${entry.deliveryDeadlineMs}::float8
          returning ticket
        `)
        // A delivered ticket of an open session is its owner's to re-send or give up.
        const timedOut = await pool.anyFirst(sql.type(TicketIdRow)`
          update tickets t set state = 'timed_out', finished_at = now()
          where t.state = 'delivered'
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
              where ticket = any(${sql.array([...ids], "text")}) and state in ('queued', 'delivered')
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

    ticketState: (ticket) =>
      attempt("ticketState", async () => {
        const row = await pool.maybeOne(
          sql.type(StateRow)`select state from tickets where ticket = ${ticket}`,
        )
        return row === null ? Option.none() : Option.some(row.state)
      }),

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
            server_id as "serverId", server_ip as "serverIp"
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
  return store
}

/** The Store over an existing pool (whose lifetime the caller manages). */
export const layerPg = (pool: DatabasePool): Layer.Layer<Store> => Layer.succeed(Store, makePgStore(pool))

export interface PgStoreOptions extends PoolOptions {
  /** Apply pending migrations before serving (default true). */
  readonly migrate?: boolean
  /** Where the migrations are (default: the repository's `sql/`). */
  readonly migrationsDir?: string
}

/** Opens a pool to `databaseUrl` (closed with the layer), migrates it, and provides the Store. */
export const layer = (
  databaseUrl: string,
  options: PgStoreOptions = {},
): Layer.Layer<Store, PoolError | MigrationError> =>
  Layer.effect(
    Store,
    Effect.gen(function* () {
      const pool = yield* makePool(databaseUrl, options)
      if (options.migrate !== false) {
        yield* migrate(pool, options.migrationsDir === undefined ? {} : { dir: options.migrationsDir })
      }
      return makePgStore(pool)
    }),
  )

export const PgStore = { make: makePgStore, layerPg, layer } as const
