import {
  type Admission,
  type Login,
  Protocol,
  type RegistrationClaim,
  SessionStore,
  type SessionStoreService,
  type Ticket,
} from "@picus/core"
import { Option, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { sameTurn } from "./sameTurn.ts"
import {
  attempt,
  leaseEnd,
  limitOf,
  NoRow,
  NullableInt,
  NullableString,
  OwnerFields,
  ownerLost,
  std,
  TicketRow,
  ticketColumns,
  ticketOrder,
  UUID,
} from "./shared.ts"

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
const AdmittedRow = std(
  Schema.Struct({
    ord: Schema.Int,
    admitted: Schema.Boolean,
    hadRow: Schema.Boolean,
    identityKey: NullableString,
    lastRegisterTs: NullableInt,
    lastAdmittedAt: NullableInt,
  }),
)
const LoggedOutRow = std(Schema.Struct({ ord: Schema.Int, logged: Schema.Boolean }))
const EndedRow = std(Schema.Struct({ peerId: Schema.String, sessionId: Schema.String }))
const ServerIdRow = std(Schema.Struct({ serverId: Schema.String }))
const InstanceRow = std(
  Schema.Struct({ aliveAgoMs: Schema.Finite, stopped: Schema.Boolean, beat: Schema.String }),
)

/** The verdict on a claim, given the peer's row as it stands (null: no row yet); see admitRegistration. */
const admissionOf = (claim: RegistrationClaim, row: typeof IdentityRow.Type | null): Admission => {
  if (row === null) return "admitted"
  if (row.identityKey !== null && claim.identityKey !== row.identityKey) return "wrong_identity"
  if (claim.ts !== null && row.lastRegisterTs !== null && claim.ts <= row.lastRegisterTs) return "replayed"
  if (row.lastAdmittedAt !== null && claim.now - row.lastAdmittedAt < claim.minIntervalMs) return "too_many"
  return "admitted"
}

type LoginOf = Login & { readonly leaseMs: number }
type LogoutOf = Parameters<SessionStoreService["logout"]>[0]
type LoggedIn = { readonly epoch: number; readonly adopted: ReadonlyArray<Ticket> }

/** The SessionStore over a slonik pool. */
export const makePgSessions = (pool: DatabasePool): SessionStoreService => {
  /** One claim on its own: the peer's row locked, judged, updated. */
  const admitOne = (claim: RegistrationClaim) =>
    pool.transaction(async (tx): Promise<Admission> => {
      await tx.query(sql.type(NoRow)`
        insert into peers (peer_id) values (${claim.peerId}) on conflict (peer_id) do nothing
      `)
      // The row lock makes registrations of one peer id, on any instance, wait for each other.
      const row = await tx.one(sql.type(IdentityRow)`
        select identity_key as "identityKey", last_register_ts as "lastRegisterTs",
          last_admitted_at as "lastAdmittedAt"
        from peers where peer_id = ${claim.peerId} for update
      `)
      const admission = admissionOf(claim, row)
      if (admission !== "admitted") return admission
      await tx.query(sql.type(NoRow)`
        update peers set identity_key = coalesce(identity_key, ${claim.identityKey}),
          last_register_ts = coalesce(${claim.ts}::bigint, last_register_ts),
          last_admitted_at = ${claim.now}::bigint
        where peer_id = ${claim.peerId}
      `)
      return "admitted"
    })

  /**
   * Claims of different peers in one statement: each row is judged as it stands once locked (the
   * conflict's update and its condition see the latest committed row) and updated if admitted. A
   * refusal's reason is read from the statement's snapshot; a claim that snapshot would have
   * admitted (a registration of the same peer elsewhere, at the same moment) is judged again alone.
   */
  const admitBatch = async (claims: ReadonlyArray<RegistrationClaim>) => {
    const rows = await pool.any(sql.prepared("admit registrations", AdmittedRow)`
      with req as (
        select * from ${sql.unnest(
          claims.map((c, i) => [i, c.peerId, c.identityKey, c.ts, c.now]),
          ["int4", "text", "text", "int8", "int8"],
        )} as r(ord, peer_id, identity_key, ts, now)
      ), before as (
        select peer_id, identity_key, last_register_ts, last_admitted_at from peers
        where peer_id in (select peer_id from req)
      ), admitted as (
        -- In the order of the peer ids, as every batch locks them (no deadlock between instances).
        insert into peers (peer_id, identity_key, last_register_ts, last_admitted_at)
        select peer_id, identity_key, ts, now from req order by peer_id
        on conflict (peer_id) do update set
          identity_key = coalesce(peers.identity_key, excluded.identity_key),
          last_register_ts = coalesce(excluded.last_register_ts, peers.last_register_ts),
          last_admitted_at = excluded.last_admitted_at
        where (peers.identity_key is null or peers.identity_key = excluded.identity_key)
          and (excluded.last_register_ts is null or peers.last_register_ts is null
            or excluded.last_register_ts > peers.last_register_ts)
          and (peers.last_admitted_at is null
            or excluded.last_admitted_at - peers.last_admitted_at >= ${claims[0]!.minIntervalMs}::float8)
        returning peer_id
      )
      select r.ord, a.peer_id is not null as admitted, b.peer_id is not null as "hadRow",
        b.identity_key as "identityKey", b.last_register_ts as "lastRegisterTs",
        b.last_admitted_at as "lastAdmittedAt"
      from req r left join admitted a on a.peer_id = r.peer_id left join before b on b.peer_id = r.peer_id
      order by r.ord
    `)
    return claims.map((claim, i): Admission | undefined => {
      const row = rows[i]
      if (row === undefined) return undefined
      if (row.admitted) return "admitted"
      const admission = admissionOf(claim, row.hadRow ? row : null)
      return admission === "admitted" ? undefined : admission
    })
  }

  const admit = sameTurn({
    keyOf: (claim: RegistrationClaim) => claim.peerId,
    groupOf: (claim) => String(claim.minIntervalMs),
    send: admitBatch,
    alone: admitOne,
  })

  /**
   * Logins of different peers, in one transaction of three statements: the peers recorded (their
   * rows locked, in order, so that logins of one peer anywhere wait for each other); then, seeing
   * what those logins committed, their other sessions closed and the new ones opened, each with its
   * login row after the logouts; then the peers' open tickets handed over (seeing what submissions
   * that held the old sessions committed).
   */
  const loginBatch = (logins: ReadonlyArray<LoginOf>) =>
    pool.transaction(async (tx): Promise<ReadonlyArray<LoggedIn>> => {
      const { serverId, leaseMs } = logins[0]!
      const byPeer = [...logins].sort((a, b) => (a.peerId < b.peerId ? -1 : a.peerId > b.peerId ? 1 : 0))
      await tx.query(sql.prepared("login peers", NoRow)`
        -- An instance without a row yet (one that never said it was alive) gets its first lease.
        with instance as (
          insert into server_instances (server_id, lease_until)
          values (${serverId}, ${leaseEnd(leaseMs)})
          on conflict (server_id) do nothing
        )
        insert into peers (peer_id, os, distro, hostname, agent_version, labels)
        select peer_id, os, distro, hostname, agent_version, labels::jsonb from ${sql.unnest(
          byPeer.map((l, i) => [
            i,
            l.peerId,
            l.os,
            l.distro,
            l.hostname,
            l.agentVersion,
            JSON.stringify(l.labels ?? {}),
          ]),
          ["int4", "text", "text", "text", "text", "text", "text"],
        )} as r(ord, peer_id, os, distro, hostname, agent_version, labels)
        order by ord
        on conflict (peer_id) do update set
          os = excluded.os, distro = excluded.distro, hostname = excluded.hostname, labels = excluded.labels,
          agent_version = excluded.agent_version, last_seen_at = now()
      `)
      await tx.query(sql.prepared("login sessions", NoRow)`
        with req as (
          select * from ${sql.unnest(
            logins.map((l, i) => [
              i,
              l.peerId,
              l.sessionId,
              l.os,
              l.distro,
              l.tokenId ?? null,
              l.sealed ?? false,
              l.serverIp,
            ]),
            ["int4", "text", "uuid", "text", "text", "int8", "bool", "text"],
          )} as r(ord, peer_id, session_id, os, distro, token_id, sealed, server_ip)
        ), old as (
          select session_id from sessions
          where peer_id in (select peer_id from req) and closed_at is null
          order by session_id
          for update
        ), replaced as (
          -- The peers' older sessions end here; moving their epoch on fences whoever holds them.
          update sessions s set closed_at = now(), epoch = s.epoch + 1
          from old where s.session_id = old.session_id
          returning s.session_id, s.peer_id
        ), opened as (
          insert into sessions (session_id, peer_id, os, distro, owner_id, owner_run, token_id, sealed)
          select session_id, peer_id, os, distro, ${serverId},
            (select run from server_instances where server_id = ${serverId}), token_id, sealed
          from req
        )
        insert into registration_log (event, peer_id, session_id, reason, server_id, server_ip)
        select event, peer_id, session_id, reason, ${serverId}, server_ip from (
          select 0 as part, -1 as ord, 'logout' as event, peer_id, session_id,
            ${Protocol.LogoutReason.replaced}::text as reason, null::text as server_ip
          from replaced
          union all
          select 1, ord, 'login', peer_id, session_id, null, server_ip from req
        ) rows
        order by part, ord, session_id
        on conflict (session_id) where event = 'logout' do nothing
      `)
      const adopted = await tx.any(sql.prepared("login tickets", TicketRow)`
        with adopted as (
          update tickets t set session_id = r.session_id
          from ${sql.unnest(
            logins.map((l) => [l.peerId, l.sessionId]),
            ["text", "uuid"],
          )} as r(peer_id, session_id)
          where t.peer_id = r.peer_id and t.finished_at is null and t.state in ('queued', 'delivered')
          returning t.*
        )
        select ${ticketColumns} from adopted order by ${ticketOrder}
      `)
      const bySession = Map.groupBy(adopted, (t) => t.sessionId)
      return logins.map((l) => ({ epoch: 1, adopted: bySession.get(l.sessionId.toLowerCase()) ?? [] }))
    })

  const loginBatched = sameTurn({
    keyOf: (login: LoginOf) => login.peerId,
    groupOf: (login) => `${login.serverId}\u0000${login.leaseMs}`,
    send: loginBatch,
  })

  /** Logouts of different sessions in one statement (a shutdown logs out every session at once). */
  const logoutBatch = async (logouts: ReadonlyArray<LogoutOf>) => {
    const rows = await pool.any(sql.prepared("logout sessions", LoggedOutRow)`
      with req as (
        select * from ${sql.unnest(
          logouts.map((l, i) => [i, l.sessionId, l.epoch, l.peerId, l.reason, l.serverId]),
          ["int4", "uuid", "int4", "text", "text", "text"],
        )} as r(ord, session_id, epoch, peer_id, reason, server_id)
      ), closed as (
        update sessions s set closed_at = now()
        from req r
        where s.session_id = r.session_id and s.epoch = r.epoch and s.closed_at is null
        returning s.session_id
      ), logged as (
        insert into registration_log (event, peer_id, session_id, reason, server_id)
        select 'logout', r.peer_id, r.session_id, r.reason, r.server_id
        from req r join closed c on c.session_id = r.session_id
        order by r.ord
        on conflict (session_id) where event = 'logout' do nothing
        returning session_id
      )
      select r.ord, l.session_id is not null as logged
      from req r left join logged l on l.session_id = r.session_id
      order by r.ord
    `)
    return logouts.map((_, i) => rows[i]?.logged)
  }
  const logoutBatched = sameTurn({
    keyOf: (logout: LogoutOf) => logout.sessionId.toLowerCase(),
    send: logoutBatch,
  })

  return SessionStore.of({
    admitRegistration: (claim) => attempt("admitRegistration", () => admit(claim)),

    login: (login) => attempt("login", () => loginBatched(login)),

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
      attempt("logout", async () => UUID.test(entry.sessionId) && (await logoutBatched(entry))),

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
        // A new run: the sessions of the one before (owner_run below it) are lost from now on.
        await pool.query(sql.type(NoRow)`
          insert into server_instances (server_id) values (${serverId})
          on conflict (server_id) do update set
            alive_at = now(),
            stopped_at = null,
            started_at = now(),
            run = server_instances.run + 1
        `)
      }),

    instanceStopped: (serverId) =>
      attempt("instanceStopped", async () => {
        await pool.query(sql.type(NoRow)`
          insert into server_instances (server_id, stopped_at) values (${serverId}, now())
          on conflict (server_id) do update set stopped_at = now(),
            lease_until = least(server_instances.lease_until, now())
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

    renewLease: (entry) =>
      attempt("renewLease", async () => {
        // One row, whatever the number of sessions. No session is locked, so it never waits for a
        // delivery or a result; a takeover of this instance holds the row for share, so a renewal
        // racing one waits for it and the read below sees what it took.
        await pool.query(sql.type(NoRow)`
          insert into server_instances (server_id, lease_until) values (${entry.serverId}, ${leaseEnd(entry.leaseMs)})
          on conflict (server_id) do update set alive_at = now(), lease_until = excluded.lease_until
        `)
        const held = entry.sessions.filter((l) => UUID.test(l.sessionId))
        if (held.length === 0) return []
        const renewed = new Set(
          await pool.anyFirst(sql.type(SessionIdRow)`
            select s.session_id::text as "sessionId" from sessions s
            join ${sql.unnest(
              held.map((l) => [l.sessionId, l.epoch]),
              ["uuid", "int4"],
            )} as l(session_id, epoch) on s.session_id = l.session_id and s.epoch = l.epoch
            join server_instances i on i.server_id = s.owner_id and i.run = s.owner_run
            where s.owner_id = ${entry.serverId} and s.closed_at is null
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
        const candidates =
          entry.sessionId === undefined
            ? // Per instance, a range of sessions_open_owner: all the sessions of one whose lease ran
              // out (owner_run below run + 1), those of earlier runs (below run) of any other. The
              // lapsed rows are locked for share: a renewal of one of them waits for this takeover,
              // and one that committed first is seen (a locked row is read again, so its new lease
              // drops it here and the snapshot's old one drops it from the other branch).
              sql.fragment`
                lapsed as materialized (
                  select server_id, run + 1 as below from server_instances
                  where lease_until < now() and server_id <> ${entry.serverId}
                  for share
                ), owners as (
                  select server_id, below from lapsed
                  union all
                  select server_id, run from server_instances
                  where not (lease_until < now() and server_id <> ${entry.serverId})
                ), candidates as (
                  -- Lateral, so each owner's range is an index scan: a plain join may read every row.
                  select c.session_id, c.owner_id from owners o
                  cross join lateral (
                    select s.session_id, s.owner_id from sessions s
                    where s.owner_id = o.server_id and s.owner_run < o.below and s.closed_at is null
                    limit ${limit}
                    for update skip locked
                  ) c
                  limit ${limit}
                )`
            : // Asked for one session by a message of its peer: the caller does not hold it in memory,
              // so a session in the caller's own name is from an earlier run of it, or was let go
              // half-way, and is taken back at once. The owner's row is locked for share, as above.
              sql.fragment`
                candidates as (
                  select s.session_id, s.owner_id from sessions s
                  join server_instances i on i.server_id = s.owner_id
                  where s.session_id = ${entry.sessionId}::uuid and s.closed_at is null
                    and (s.owner_id = ${entry.serverId} or s.owner_run < i.run or i.lease_until < now())
                  for update of s skip locked
                  for share of i
                )`
        return pool.transaction(async (tx) => {
          const taken = await tx.any(sql.type(TakenRow)`
            with me as (
              insert into server_instances (server_id, lease_until) values (${entry.serverId}, ${leaseEnd(entry.leaseMs)})
              on conflict (server_id) do nothing
              returning run
            ), my_run as (
              select coalesce(
                (select run from me),
                (select run from server_instances where server_id = ${entry.serverId})
              ) as run
            ), ${candidates}
            update sessions s set owner_id = ${entry.serverId}, owner_run = (select run from my_run),
              epoch = s.epoch + 1
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
            )}) and finished_at is null and state in ('queued', 'delivered')
            order by ${ticketOrder}
          `)
          return taken.map((t) => ({ ...t, tickets: tickets.filter((k) => k.sessionId === t.sessionId) }))
        })
      }),

    sessionOf: (peerId) =>
      attempt("sessionOf", async () =>
        Option.fromNullOr(
          await pool.maybeOne(sql.type(SealedOwnerRow)`
            select s.session_id::text as "sessionId", s.owner_id as "ownerId", s.epoch,
              ${ownerLost("s")} as "expired", s.sealed
            from sessions s where s.peer_id = ${peerId} and s.closed_at is null
            order by opened_at desc limit 1
          `),
        ),
      ),
  })
}
