import { Protocol, SessionStore, type SessionStoreService } from "@picus/core"
import { Option, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import {
  attempt,
  leaseEnd,
  limitOf,
  NoRow,
  NullableInt,
  NullableString,
  OwnerFields,
  std,
  TicketRow,
  ticketColumns,
  ticketOrder,
  UUID,
} from "./shared.ts"

const LogIdRow = std(Schema.Struct({ id: Schema.Int }))
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
    sealed: Schema.Boolean,
  }),
)
const SealedOwnerRow = std(Schema.Struct({ ...OwnerFields, sealed: Schema.Boolean }))
const IdentityRow = std(
  Schema.Struct({
    identityKey: NullableString,
    lastRegisterTs: NullableInt,
    lastAdmittedAt: NullableInt,
  }),
)
const EndedRow = std(Schema.Struct({ peerId: Schema.String, sessionId: Schema.String }))
const ServerIdRow = std(Schema.Struct({ serverId: Schema.String }))
const InstanceRow = std(
  Schema.Struct({ aliveAgoMs: Schema.Finite, stopped: Schema.Boolean, beat: Schema.String }),
)

/** The SessionStore over a slonik pool. */
export const makePgSessions = (pool: DatabasePool): SessionStoreService => {
  return SessionStore.of({
    admitRegistration: (claim) =>
      attempt("admitRegistration", () =>
        pool.transaction(async (tx) => {
          await tx.query(sql.type(NoRow)`
            insert into peers (peer_id) values (${claim.peerId}) on conflict (peer_id) do nothing
          `)
          // The row lock makes registrations of one peer id, on any instance, wait for each other.
          const row = await tx.one(sql.type(IdentityRow)`
            select identity_key as "identityKey", last_register_ts as "lastRegisterTs",
              last_admitted_at as "lastAdmittedAt"
            from peers where peer_id = ${claim.peerId} for update
          `)
          if (row.identityKey !== null && claim.identityKey !== row.identityKey) return "wrong_identity"
          if (claim.ts !== null && row.lastRegisterTs !== null && claim.ts <= row.lastRegisterTs)
            return "replayed"
          if (row.lastAdmittedAt !== null && claim.now - row.lastAdmittedAt < claim.minIntervalMs)
            return "too_many"
          await tx.query(sql.type(NoRow)`
            update peers set identity_key = coalesce(identity_key, ${claim.identityKey}),
              last_register_ts = coalesce(${claim.ts}::bigint, last_register_ts),
              last_admitted_at = ${claim.now}::bigint
            where peer_id = ${claim.peerId}
          `)
          return "admitted"
        }),
      ),

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
            insert into sessions (session_id, peer_id, os, distro, owner_id, lease_until, token_id, sealed)
            values (${login.sessionId}::uuid, ${login.peerId}, ${login.os}, ${login.distro}, ${login.serverId}, ${leaseEnd(login.leaseMs)}, ${login.tokenId ?? null}, ${login.sealed ?? false})
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
          insert into registration_log (event, peer_id, reason, server_id, server_ip, repeats)
          values (
            'rejected', ${entry.peerId}, ${entry.reason}, ${entry.serverId}, ${entry.serverIp},
            ${entry.repeats ?? 1}
          )
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

    endSessionsOfTokens: (entry) =>
      attempt("endSessionsOfTokens", async () => {
        if (entry.tokenIds.length === 0) return []
        // Moving the epoch on fences whoever holds them, as a login replacing a session does.
        return pool.any(sql.type(EndedRow)`
          with ended as (
            update sessions set closed_at = now(), epoch = epoch + 1
            where token_id = any(${sql.array(entry.tokenIds, "int8")}) and closed_at is null
            returning session_id, peer_id
          ), logged as (
            insert into registration_log (event, peer_id, session_id, reason, server_id)
            select 'logout', peer_id, session_id, ${entry.reason}, ${entry.serverId}
            from ended order by session_id
            on conflict (session_id) where event = 'logout' do nothing
          )
          select peer_id as "peerId", session_id::text as "sessionId" from ended order by peer_id
        `)
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
          // Locked in session id order first, as deliveries and results lock theirs: an update in
          // whatever order its join gives deadlocks with them.
          await pool.anyFirst(sql.type(SessionIdRow)`
            with mine as materialized (
              select s.session_id from sessions s
              join ${sql.unnest(
                held.map((l) => [l.sessionId, l.epoch]),
                ["uuid", "int4"],
              )} as l(session_id, epoch) on s.session_id = l.session_id and s.epoch = l.epoch
              where s.owner_id = ${entry.serverId} and s.closed_at is null
              order by s.session_id
              for update of s
            )
            update sessions s set lease_until = ${leaseEnd(entry.leaseMs)}
            from mine m
            where s.session_id = m.session_id
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
              s.os, s.distro, c.owner_id as "fromServerId", p.agent_version is not null as "heartbeats",
              s.sealed
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
          await pool.maybeOne(sql.type(SealedOwnerRow)`
            select session_id::text as "sessionId", owner_id as "ownerId", epoch,
              lease_until < now() as "expired", sealed
            from sessions where peer_id = ${peerId} and closed_at is null
            order by opened_at desc limit 1
          `),
        ),
      ),
  })
}
