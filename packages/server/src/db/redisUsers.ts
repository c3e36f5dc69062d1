import { Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { RedisUserStore } from "../access/RedisUsers.ts"
import { sameTurn } from "./sameTurn.ts"
import { attempt, NoRow, NullableInt, NullableString, std, UUID } from "./shared.ts"

const UserRow = std(
  Schema.Struct({
    name: Schema.String,
    kind: Schema.Literals(["enroll", "peer", "provisioned"]),
    peerId: NullableString,
    tokenId: NullableInt,
    sessionId: NullableString,
    passwordHash: Schema.String,
  }),
)
const NameRow = std(Schema.Struct({ name: Schema.String }))

const userColumns = sql.fragment`
  name, kind, peer_id as "peerId", token_id as "tokenId", session_id::text as "sessionId",
  password_hash as "passwordHash"
`

const GrantedRow = std(Schema.Struct({ ord: Schema.Int, granted: Schema.Boolean }))

interface PeerGrant {
  readonly name: string
  readonly peerId: string
  readonly sessionId: string
  readonly passwordHash: string
}

/** The RedisUserStore over a slonik pool (table redis_users). */
export const makePgRedisUsers = (pool: DatabasePool) => {
  // Sessions opened together (a storm of registrations) write their users in one statement.
  // A provisioned seed peer's user is never taken over by a session's.
  const grantBatch = async (grants: ReadonlyArray<PeerGrant>) => {
    const rows = await pool.any(sql.prepared("grant peer users", GrantedRow)`
      with req as (
        select * from ${sql.unnest(
          grants.map((g, i) => [i, g.name, g.peerId, g.sessionId, g.passwordHash]),
          ["int4", "text", "text", "uuid", "text"],
        )} as r(ord, name, peer_id, session_id, password_hash)
      ), granted as (
        insert into redis_users (name, kind, peer_id, session_id, password_hash)
        select name, 'peer', peer_id, session_id, password_hash from req order by name
        on conflict (name) do update set
          session_id = excluded.session_id, password_hash = excluded.password_hash,
          peer_id = excluded.peer_id, created_at = now()
        where redis_users.kind = 'peer'
        returning name
      )
      select r.ord, g.name is not null as granted from req r left join granted g on g.name = r.name
      order by r.ord
    `)
    return grants.map((_, i) => rows[i]?.granted)
  }
  const grant = sameTurn({ keyOf: (g: PeerGrant) => g.name, send: grantBatch })

  /** Users of sessions that ended together (a shutdown), forgotten in one statement. */
  const releaseBatch = async (
    users: ReadonlyArray<{ readonly name: string; readonly sessionId: string }>,
  ) => {
    const released = new Set(
      await pool.anyFirst(sql.prepared("release peer users", NameRow)`
        delete from redis_users u
        using ${sql.unnest(
          users.map((u) => [u.name, u.sessionId]),
          ["text", "uuid"],
        )} as r(name, session_id)
        where u.name = r.name and u.kind = 'peer' and u.session_id = r.session_id
        returning u.name
      `),
    )
    return users.map((u) => released.has(u.name))
  }
  const release = sameTurn({
    keyOf: (user: { readonly name: string; readonly sessionId: string }) => user.name,
    send: releaseBatch,
  })

  return RedisUserStore.of({
    grantPeer: (user) => attempt("grantPeer", () => grant(user)),

    releasePeer: (user) =>
      attempt("releasePeer", async () => UUID.test(user.sessionId) && (await release(user))),

    putEnroll: (user) =>
      attempt("putEnroll", async () => {
        await pool.query(sql.type(NoRow)`
          insert into redis_users (name, kind, token_id, password_hash)
          values (${user.name}, 'enroll', ${user.tokenId}, ${user.passwordHash})
          on conflict (name) do update set
            token_id = excluded.token_id, password_hash = excluded.password_hash, created_at = now()
        `)
      }),

    putProvisioned: (user) =>
      attempt("putProvisioned", async () => {
        await pool.query(sql.type(NoRow)`
          insert into redis_users (name, kind, peer_id, token_id, password_hash)
          values (${user.name}, 'provisioned', ${user.peerId}, ${user.tokenId}, ${user.passwordHash})
          on conflict (name) do update set
            kind = 'provisioned', peer_id = excluded.peer_id, token_id = excluded.token_id,
            session_id = null, password_hash = excluded.password_hash, created_at = now()
        `)
      }),

    forgetOf: (of) =>
      attempt("forgetOf", async () => {
        const sessionIds = of.sessionIds.filter((id) => UUID.test(id))
        if (of.tokenIds.length === 0 && sessionIds.length === 0) return []
        return pool.anyFirst(sql.type(NameRow)`
          delete from redis_users
          where (kind <> 'peer' and token_id = any(${sql.array(of.tokenIds, "int8")}))
            or session_id = any(${sql.array(sessionIds, "uuid")})
          returning name
        `)
      }),

    forgetClosed: (graceMs) =>
      attempt("forgetClosed", () =>
        pool.anyFirst(sql.type(NameRow)`
          delete from redis_users r
          where r.kind = 'peer'
            and r.created_at < now() - ${graceMs}::float8 * interval '1 millisecond'
            and not exists (
              select 1 from sessions s where s.session_id = r.session_id and s.closed_at is null
            )
          returning r.name
        `),
      ),

    all: attempt("redisUsers", () =>
      pool.any(sql.type(UserRow)`select ${userColumns} from redis_users order by name`),
    ),

    byNames: (names) =>
      attempt("redisUsersByName", () =>
        names.length === 0
          ? Promise.resolve([])
          : pool.any(sql.type(UserRow)`
              select ${userColumns} from redis_users where name = any(${sql.array(names, "text")})
            `),
      ),
  })
}
