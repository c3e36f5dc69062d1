import { createHash, randomUUID } from "node:crypto"
import { assert, describe, it, layer } from "@effect/vitest"
import { type CatalogJob, Store, StoreError } from "@picus/core"
import { eventually, loginOf, storeContract } from "@picus/core/testing"
import { Context, Effect, Exit, Fiber, Layer, Metric, Schema } from "effect"
import { TestClock } from "effect/testing"
import { type DatabasePool, sql } from "slonik"
import { migrate } from "../src/db/migrate.ts"
import { makePgStore, layer as pgStoreLayer } from "../src/db/PgStore.ts"
import { makePool, parseTimestamptz, RowValidationError } from "../src/db/pool.ts"
import { makePgRedisUsers } from "../src/db/redisUsers.ts"
import { makeStatementCounter, statementCounts } from "../src/db/statementCounter.ts"
import { freshDatabase } from "./support/database.ts"

/** A fresh database, dropped when the layer is released. */
const database = Effect.acquireRelease(
  Effect.promise(() => freshDatabase()),
  (db) => Effect.promise(() => db.drop()),
)

storeContract("postgres", Layer.unwrap(Effect.map(database, (db) => pgStoreLayer(db.url))))

/** The pool of a fresh, migrated database, for tests that look under the Store. */
class Db extends Context.Service<Db, { readonly pool: DatabasePool; readonly url: string }>()("test/Db") {}

const dbLayer = Layer.effect(
  Db,
  Effect.gen(function* () {
    const db = yield* database
    const pool = yield* makePool(db.url)
    yield* migrate(pool)
    return { pool, url: db.url }
  }),
)
const storeOverDb = Layer.effect(
  Store,
  Effect.gen(function* () {
    const { pool } = yield* Db
    return makePgStore(pool)
  }),
)

const std = Schema.toStandardSchemaV1
const HASH = createHash("sha256").update("a password").digest("hex")
const promise = <A>(run: () => Promise<A>) => Effect.promise(run)
const job = (jobId: string, distro: string): CatalogJob => ({
  job_id: jobId,
  name: `Job ${jobId}`,
  os: "linux",
  distro,
  command: "true",
  timeout_ms: 1_000,
})

describe("parseTimestamptz", () => {
  it("reads PostgreSQL's ISO text, truncating to milliseconds", () => {
    assert.strictEqual(parseTimestamptz("2024-05-01 10:00:00.123956+00"), Date.UTC(2024, 4, 1, 10, 0, 0, 123))
    assert.strictEqual(parseTimestamptz("2024-05-01 10:00:00+05:30"), Date.UTC(2024, 4, 1, 4, 30))
    assert.strictEqual(parseTimestamptz("2024-05-01 10:00:00.5-03"), Date.UTC(2024, 4, 1, 13, 0, 0, 500))
    assert.strictEqual(parseTimestamptz("1900-01-01 00:00:00+00:09:21"), Date.UTC(1899, 11, 31, 23, 50, 39))
    const early = new Date(0)
    early.setUTCFullYear(99, 0, 1)
    assert.strictEqual(parseTimestamptz("0099-01-01 00:00:00+00"), early.getTime())
    assert.strictEqual(parseTimestamptz("infinity"), Number.POSITIVE_INFINITY)
    assert.throws(() => parseTimestamptz("05/01/2024 10:00:00 UTC"), /DateStyle/)
  })
})

layer(Layer.provideMerge(storeOverDb, dbLayer), { timeout: 60_000 })("PgStore on PostgreSQL", (it) => {
  it.effect("returns timestamptz as epoch ms and int8 as a number, whatever the session time zone", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const Row = std(Schema.Struct({ t: Schema.Number, big: Schema.Number }))
      const row = yield* promise(() =>
        pool.transaction(async (tx) => {
          await tx.query(sql.unsafe`set local time zone 'Asia/Kolkata'`)
          return tx.one(
            sql.type(
              Row,
            )`select '2024-05-01 10:00:00.123456+02'::timestamptz as t, 9007199254740991::int8 as big`,
          )
        }),
      )
      assert.strictEqual(row.t, Date.UTC(2024, 4, 1, 8, 0, 0, 123))
      assert.strictEqual(row.big, Number.MAX_SAFE_INTEGER)
    }),
  )

  it.effect("rejects a row that does not fit its query's schema, naming the query", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const Row = std(Schema.Struct({ answer: Schema.String }))
      const error = yield* Effect.flip(
        Effect.tryPromise({ try: () => pool.one(sql.type(Row)`select 42 as answer`), catch: (e) => e }),
      )
      assert.instanceOf(error, RowValidationError)
      assert.include((error as Error).message, "select 42 as answer")
      assert.include((error as Error).message, "answer")
    }),
  )

  it.effect("validated rows are the schema's output: columns the schema does not name are dropped", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const Row = std(Schema.Struct({ a: Schema.Int }))
      const row = yield* promise(() => pool.one(sql.type(Row)`select 1 as a, 2 as b`))
      assert.deepStrictEqual(row, { a: 1 })
    }),
  )

  it.effect("maps database failures to StoreError with the operation, without the token hash", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const hash = new Uint8Array(createHash("sha256").update(randomUUID()).digest())
      yield* store.createToken({ name: "a", prefix: "pa", hash })
      const error = yield* Effect.flip(store.createToken({ name: "b", prefix: "pb", hash }))
      assert.instanceOf(error, StoreError)
      assert.strictEqual(error.operation, "createToken")
      assert.include(error.message, "unique")
      assert.notInclude(error.message, Buffer.from(hash).toString("hex"))
      const bad = yield* Effect.flip(
        store.login({
          peerId: "p",
          sessionId: "not-a-uuid",
          serverId: "s",
          serverIp: null,
          os: null,
          distro: null,
          hostname: null,
          agentVersion: null,
          leaseMs: 1_000,
        }),
      )
      assert.strictEqual(bad.operation, "login")
    }),
  )

  it.effect("concurrent logouts of one session: exactly one closes it", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const peerId = `peer-${randomUUID()}`
      const sessionId = randomUUID()
      yield* store.login({
        peerId,
        sessionId,
        serverId: "s",
        serverIp: null,
        os: "linux",
        distro: "debian",
        hostname: null,
        agentVersion: null,
        leaseMs: 60_000,
      })
      const outcomes = yield* Effect.all(
        Array.from({ length: 8 }, (_, i) =>
          store.logout({ peerId, sessionId, epoch: 1, reason: `r${i}`, serverId: "s" }),
        ),
        { concurrency: "unbounded" },
      )
      assert.strictEqual(outcomes.filter((closed) => closed).length, 1)
    }),
  )

  it.effect("two servers (two pools) recording one result: exactly one records it", () =>
    Effect.gen(function* () {
      const { url } = yield* Db
      const a = makePgStore(yield* makePool(url, { maxPoolSize: 4 }))
      const b = makePgStore(yield* makePool(url, { maxPoolSize: 4 }))
      const peerId = `peer-${randomUUID()}`
      const sessionId = randomUUID()
      const distro = `d-${randomUUID()}`
      yield* a.login({
        peerId,
        sessionId,
        serverId: "a",
        serverIp: null,
        os: "linux",
        distro,
        hostname: null,
        agentVersion: null,
        leaseMs: 60_000,
      })
      yield* a.replaceCatalog([job("one", distro)])
      const [ticket] = yield* a.createTickets({
        peerId,
        sessionId,
        serverId: "a",
        jobs: yield* a.jobsFor("linux", distro),
      })
      const result = {
        ticket: ticket!.ticket,
        peerId,
        sessionId: sessionId.toUpperCase(),
        epoch: 1,
        serverId: "a",
        status: "failed" as const,
        exitCode: 1,
        output: "out\u0000put",
        truncated: true,
        startedAt: Date.now() - 10,
        finishedAt: Date.now(),
      }
      const outcomes = yield* Effect.all(
        Array.from({ length: 6 }, (_, i) => (i % 2 === 0 ? a : b).recordResult(result)),
        { concurrency: "unbounded" },
      )
      assert.deepStrictEqual([...outcomes].sort(), [
        "duplicate",
        "duplicate",
        "duplicate",
        "duplicate",
        "duplicate",
        "recorded",
      ])
      const [row] = (yield* b.results({ peerId, limit: 10 })).filter((r) => r.ticket === ticket!.ticket)
      assert.strictEqual(row?.status, "failed")
      assert.strictEqual(row?.exitCode, 1)
      assert.isTrue(row?.truncated)
      assert.strictEqual(row?.output, "out\uFFFDput", "NUL, which PostgreSQL text cannot hold, is replaced")
      // Its result came before its delivery was marked (a job is sent first): it counts as delivered
      // once, and the late mark changes nothing.
      const { pool } = yield* Db
      const delivery = () =>
        promise(() =>
          pool.one(
            sql.type(
              std(Schema.Struct({ attempts: Schema.Int, delivered: Schema.Boolean, state: Schema.String })),
            )`
              select attempts, delivered_at is not null as delivered, state from tickets where ticket = ${ticket!.ticket}`,
          ),
        )
      assert.deepStrictEqual(yield* delivery(), { attempts: 1, delivered: true, state: "failed" })
      assert.deepStrictEqual(yield* a.markDelivered({ sessionId, epoch: 1 }, [ticket!.ticket]), [])
      assert.strictEqual((yield* delivery()).attempts, 1)
    }),
  )

  it.effect(
    "submissions made at once share a statement: each gets its own tickets, in order; an unknown peer fails alone",
    () =>
      Effect.gen(function* () {
        const { url } = yield* Db
        const store = makePgStore(yield* makePool(url, { maxPoolSize: 2 }))
        const peers = [`peer-${randomUUID()}`, `peer-${randomUUID()}`]
        for (const peerId of peers) {
          yield* store.login(loginOf(peerId))
        }
        const jobs = (names: ReadonlyArray<string>) =>
          names.map((name) => ({ name, command: "true", timeoutMs: 1_000 }))
        const [first, second, unknown, third] = yield* Effect.all(
          [
            store.submitTickets({ peerId: peers[0]!, serverId: "cli", jobs: jobs(["a1", "a2", "a3"]) }),
            store.submitTickets({ peerId: peers[1]!, serverId: "cli", jobs: jobs(["b1"]) }),
            Effect.exit(store.submitTickets({ peerId: "never-seen", serverId: "cli", jobs: jobs(["x"]) })),
            store.submitTickets({ peerId: peers[0]!, serverId: "cli", jobs: jobs(["a4"]) }),
          ],
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(
          first.tickets.map((t) => [t.name, t.peerId, t.os]),
          [
            ["a1", peers[0], "linux"],
            ["a2", peers[0], "linux"],
            ["a3", peers[0], "linux"],
          ],
        )
        assert.deepStrictEqual(
          second.tickets.map((t) => [t.name, t.peerId]),
          [["b1", peers[1]]],
        )
        assert.deepStrictEqual(
          third.tickets.map((t) => t.name),
          ["a4"],
        )
        assert.isTrue(Exit.isFailure(unknown), "a submission for a peer that never registered fails")
        assert.strictEqual(first.owner?.sessionId, third.owner?.sessionId)
        assert.notStrictEqual(first.owner?.sessionId, second.owner?.sessionId)
        const ids = [...first.tickets, ...third.tickets].map((t) => Number(t.ticket))
        assert.deepStrictEqual(
          ids,
          [...ids].sort((x, y) => x - y),
          "ids in the order submitted",
        )
        const queued = yield* store.queuedTickets(first.owner!.sessionId)
        assert.deepStrictEqual(
          queued.map((t) => t.name),
          ["a1", "a2", "a3", "a4"],
        )
      }),
  )

  it.effect("a storm's registrations share statements: admissions, users, logins, catalog reads", () =>
    Effect.gen(function* () {
      const { url } = yield* Db
      const registry = new Map()
      const counted = statementCounts.pipe(Effect.provideService(Metric.MetricRegistry, registry))
      const pool = yield* makePool(url, {
        maxPoolSize: 4,
        interceptors: [makeStatementCounter(Context.make(Metric.MetricRegistry, registry))],
      })
      const store = makePgStore(pool)
      const users = makePgRedisUsers(pool)
      const peers = Array.from({ length: 20 }, () => `storm-${randomUUID()}`)
      const together = <A, E>(each: (peerId: string) => Effect.Effect<A, E>) =>
        Effect.all(peers.map(each), { concurrency: "unbounded" })
      const before = yield* counted
      const admitted = yield* together((peerId) =>
        store.admitRegistration({
          peerId,
          identityKey: `key-${peerId}`,
          ts: 1,
          now: 1_000,
          minIntervalMs: 2_000,
        }),
      )
      const granted = yield* together((peerId) =>
        users.grantPeer({ name: `user-${peerId}`, peerId, sessionId: randomUUID(), passwordHash: HASH }),
      )
      const logins = peers.map((peerId) => loginOf(peerId))
      const loggedIn = yield* Effect.all(
        logins.map((l) => store.login(l)),
        { concurrency: "unbounded" },
      )
      yield* together(() => store.jobsFor("linux", "debian"))
      const after = yield* counted
      assert.deepStrictEqual(new Set(admitted), new Set(["admitted"]))
      assert.deepStrictEqual(new Set(granted), new Set([true]))
      assert.deepStrictEqual(new Set(loggedIn.map((l) => l.epoch)), new Set([1]))
      // One statement each for the admissions, the users and the catalog reads; one transaction of
      // three for the logins (one at a time, it was 3 + 1 + 5 + 1 statements and 2 transactions a peer).
      assert.strictEqual(after.statements - before.statements, 6, JSON.stringify(after.byStatement))
      assert.strictEqual(after.transactions - before.transactions, 1)
      const open = yield* Effect.promise(() =>
        pool.oneFirst(
          sql.type(std(Schema.Struct({ n: Schema.Int })))`
            select count(*)::int as n from sessions
            where peer_id = any(${sql.array(peers, "text")}) and closed_at is null
          `,
        ),
      )
      assert.strictEqual(open, peers.length)
      // A shutdown: every session logged out, and its user forgotten, at once (one statement each).
      const mid = yield* counted
      const [loggedOut, released] = yield* Effect.all([
        Effect.all(
          logins.map((l) =>
            store.logout({
              peerId: l.peerId,
              sessionId: l.sessionId,
              epoch: 1,
              reason: "server_shutdown",
              serverId: l.serverId,
            }),
          ),
          { concurrency: "unbounded" },
        ),
        together((peerId) => users.releasePeer({ name: `user-${peerId}`, sessionId: randomUUID() })),
      ])
      assert.deepStrictEqual(new Set(loggedOut), new Set([true]))
      assert.deepStrictEqual(new Set(released), new Set([false]), "another session's user stays")
      const end = yield* counted
      assert.strictEqual(end.statements - mid.statements, 2, JSON.stringify(end.byStatement))

      // A call the database refuses fails alone: the others of its batch are sent again one by one.
      const mixed = yield* Effect.all(
        ["ok-1", "bad", "ok-2"].map((label) =>
          Effect.exit(
            users.grantPeer({
              name: `user-${label}-${randomUUID()}`,
              peerId: peers[0]!,
              sessionId: randomUUID(),
              passwordHash: label === "bad" ? "not a hash" : HASH,
            }),
          ),
        ),
        { concurrency: "unbounded" },
      )
      assert.deepStrictEqual(
        mixed.map((e) => (Exit.isSuccess(e) ? e.value : "failed")),
        [true, "failed", true],
      )
    }),
  )

  it.effect(
    "reads of queued tickets made at once share a statement: each session gets its own, newer than its `after`, strays adopted",
    () =>
      Effect.gen(function* () {
        const { url, pool: admin } = yield* Db
        const registry = new Map()
        const counted = statementCounts.pipe(Effect.provideService(Metric.MetricRegistry, registry))
        const store = makePgStore(
          yield* makePool(url, {
            maxPoolSize: 2,
            interceptors: [makeStatementCounter(Context.make(Metric.MetricRegistry, registry))],
          }),
        )
        const sessions: Array<string> = []
        const names = [["a1", "a2"], ["b1"], ["c1", "c2", "c3"]]
        const tickets = new Map<string, string>()
        for (const jobs of names) {
          const peerId = `peer-${randomUUID()}`
          const sessionId = randomUUID()
          sessions.push(sessionId)
          yield* store.login(loginOf(peerId, { sessionId }))
          const submitted = yield* store.submitTickets({
            peerId,
            serverId: "cli",
            jobs: jobs.map((name) => ({ name, command: "true", timeoutMs: 1_000 })),
          })
          for (const t of submitted.tickets) tickets.set(t.name, t.ticket)
        }
        // a1 strays (as if its submission raced a login): the session takes it whatever `after` says.
        yield* Effect.promise(() =>
          admin.query(sql.unsafe`update tickets set session_id = null where ticket = ${tickets.get("a1")!}`),
        )
        const before = yield* counted
        const read = yield* Effect.all(
          [
            store.queuedTickets(sessions[0]!, tickets.get("a2")),
            store.queuedTickets(sessions[1]!),
            store.queuedTickets(sessions[2]!, tickets.get("c1")),
            store.queuedTickets(sessions[2]!),
            store.queuedTickets(randomUUID()),
            store.queuedTickets("not-a-session"),
          ],
          { concurrency: "unbounded" },
        )
        assert.deepStrictEqual(
          read.map((ts) => ts.map((t) => t.name)),
          [["a1"], ["b1"], ["c2", "c3"], ["c1", "c2", "c3"], [], []],
        )
        assert.strictEqual(read[0]![0]!.sessionId, sessions[0], "the stray is the session's now")
        const after = yield* counted
        assert.strictEqual(
          (after.byStatement["queued tickets"] ?? 0) - (before.byStatement["queued tickets"] ?? 0),
          1,
          "one statement for all five sessions",
        )
        assert.strictEqual(after.statements - before.statements, 1)
        assert.deepStrictEqual(
          (yield* store.queuedTickets(sessions[0]!, tickets.get("a2"))).map((t) => t.name),
          [],
          "adopted once: it is no stray any more",
        )
      }),
  )

  it.effect("replaceCatalog keeps disabled jobs (tickets still point at them) and re-enables them", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const { pool } = yield* Db
      const distro = `d-${randomUUID()}`
      yield* store.replaceCatalog([job("keep", distro), job("drop", distro), job("keep", distro)])
      yield* store.replaceCatalog([job("keep", distro)])
      const EnabledRow = std(Schema.Struct({ job_id: Schema.String, enabled: Schema.Boolean }))
      const rows = yield* promise(() =>
        pool.any(
          sql.type(
            EnabledRow,
          )`select job_id, enabled from jobs where job_id in ('keep', 'drop') order by job_id`,
        ),
      )
      assert.deepStrictEqual(rows, [
        { job_id: "drop", enabled: false },
        { job_id: "keep", enabled: true },
      ])
      yield* store.replaceCatalog([job("keep", distro), job("drop", distro)])
      assert.deepStrictEqual(
        (yield* store.jobsFor("linux", distro)).map((j) => j.job_id),
        ["drop", "keep"],
      )
    }),
  )

  it.effect("revokeToken: digits match the id only, anything else the prefix; only active tokens", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const hash = () => new Uint8Array(createHash("sha256").update(randomUUID()).digest())
      const prefix = `px-${randomUUID()}`
      yield* store.createToken({ name: "1", prefix, hash: hash() })
      yield* store.createToken({ name: "2", prefix, hash: hash() })
      assert.strictEqual((yield* store.revokeToken(prefix)).length, 2)
      assert.deepStrictEqual(yield* store.revokeToken(prefix), [])
      assert.deepStrictEqual(yield* store.revokeToken("99999999999999999999999"), [])
      const listed = (yield* store.listTokens).filter((t) => t.prefix === prefix)
      assert.isTrue(listed.every((t) => typeof t.revokedAt === "number" && t.revokedAt >= t.createdAt))
    }),
  )

  /** Logs in `count` sessions held by `serverId`, with a lease of `leaseMs` for a new instance. */
  const sessionsOf = (serverId: string, count: number, leaseMs = 60_000) =>
    Effect.gen(function* () {
      const store = yield* Store
      const ids = Array.from({ length: count }, () => randomUUID()).sort()
      for (const sessionId of ids) {
        yield* store.login({
          peerId: `peer-${sessionId}`,
          sessionId,
          serverId,
          serverIp: null,
          os: "linux",
          distro: "debian",
          hostname: null,
          agentVersion: null,
          leaseMs,
        })
      }
      return ids
    })

  /** A transaction holding these sessions' rows locked (`mode`) until `release` is called. */
  const holdSessions = (pool: DatabasePool, ids: ReadonlyArray<string>, mode: "share" | "update") => {
    let release: () => void = () => {}
    const released = new Promise<void>((resolve) => {
      release = resolve
    })
    let locked: () => void = () => {}
    const holding = new Promise<void>((resolve) => {
      locked = resolve
    })
    const done = pool.transaction(async (tx) => {
      await tx.query(
        mode === "share"
          ? sql.unsafe`select 1 from sessions where session_id = any(${sql.array(ids, "uuid")}) order by session_id for share`
          : sql.unsafe`select 1 from sessions where session_id = any(${sql.array(ids, "uuid")}) order by session_id for update`,
      )
      locked()
      await released
    })
    return { holding, release, done }
  }

  const XminRow = std(Schema.Struct({ xmin: Schema.String }))
  const xminsOf = (pool: DatabasePool, ids: ReadonlyArray<string>) =>
    promise(() =>
      pool.anyFirst(
        sql.type(
          XminRow,
        )`select xmin::text as xmin from sessions where session_id = any(${sql.array(ids, "uuid")}) order by session_id`,
      ),
    )

  // The per-session renewal it replaces locked every session (and once deadlocked with deliveries,
  // found by the fuzz). The instance's renewal locks none: it cannot wait for a delivery, a result
  // or a takeover holding them, nor deadlock with one.
  it.effect("a lease renewal locks and writes no session row: it ends while others hold them all", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const store = yield* Store
      const serverId = `renewing-${randomUUID()}`
      const ids = yield* sessionsOf(serverId, 3)
      const before = yield* xminsOf(pool, ids)
      const held = holdSessions(pool, ids, "update")
      yield* promise(() => held.holding)
      const renewed = yield* store.renewLease({
        serverId,
        leaseMs: 60_000,
        sessions: ids.map((sessionId) => ({ sessionId, epoch: 1 })),
      })
      held.release()
      yield* promise(() => held.done)
      assert.sameMembers([...renewed], ids)
      assert.deepStrictEqual(yield* xminsOf(pool, ids), before, "no session row was written")
    }),
  )

  it.effect("a takeover skips the sessions a delivery holds, without waiting, and takes them once free", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const store = yield* Store
      const [busy, free] = yield* sessionsOf(`lost-${randomUUID()}`, 2, 1)
      yield* TestClock.withLive(Effect.sleep("50 millis"))
      const delivery = holdSessions(pool, [busy!], "share")
      yield* promise(() => delivery.holding)
      const ours = (taken: ReadonlyArray<{ readonly sessionId: string }>) =>
        taken.map((t) => t.sessionId).filter((id) => id === busy || id === free)
      const taker = `taker-${randomUUID()}`
      const first = yield* store.takeOverSessions({ serverId: taker, leaseMs: 60_000, limit: 1_000 })
      delivery.release()
      yield* promise(() => delivery.done)
      assert.deepStrictEqual(ours(first), [free!])
      const second = yield* store.takeOverSessions({ serverId: taker, leaseMs: 60_000, limit: 1_000 })
      assert.deepStrictEqual(ours(second), [busy!])
    }),
  )

  it.effect("a renewal waits for a takeover holding its instance's row, and then tells what it took", () =>
    Effect.gen(function* () {
      const { pool } = yield* Db
      const store = yield* Store
      const serverId = `paused-${randomUUID()}`
      const ids = yield* sessionsOf(serverId, 2, 1)
      yield* TestClock.withLive(Effect.sleep("50 millis"))
      // What a takeover's statement holds while its transaction is open: the lapsed row, for share.
      let commit: () => void = () => {}
      const committing = new Promise<void>((resolve) => {
        commit = resolve
      })
      let lockedRow: () => void = () => {}
      const rowLocked = new Promise<void>((resolve) => {
        lockedRow = resolve
      })
      const takeover = pool.transaction(async (tx) => {
        await tx.query(sql.unsafe`select 1 from server_instances where server_id = ${serverId} for share`)
        await tx.query(
          sql.unsafe`update sessions set owner_id = 'taker', epoch = epoch + 1 where session_id = ${ids[0]!}::uuid`,
        )
        lockedRow()
        await committing
      })
      yield* promise(() => rowLocked)
      const renewal = yield* store
        .renewLease({
          serverId,
          leaseMs: 60_000,
          sessions: ids.map((sessionId) => ({ sessionId, epoch: 1 })),
        })
        .pipe(Effect.forkChild)
      yield* TestClock.withLive(
        eventually(
          promise(() =>
            pool.oneFirst(
              sql.type(std(Schema.Struct({ n: Schema.Int })))`
                select count(*)::int as n from pg_stat_activity
                where datname = current_database() and wait_event_type = 'Lock'
                  and query like '%insert into server_instances%'
              `,
            ),
          ).pipe(Effect.map((n) => (n === 1 ? true : undefined))),
          "the renewal waiting for the takeover's lock",
        ),
      )
      commit()
      yield* promise(() => takeover)
      assert.deepStrictEqual([...(yield* Fiber.join(renewal))], [ids[1]])
    }),
  )

  it.effect(
    "admissions sent together while another instance admits one of their peers: that one refused with the reason it has once locked",
    () =>
      Effect.gen(function* () {
        const { pool } = yield* Db
        const store = yield* Store
        const [raced, other] = [`raced-${randomUUID()}`, `other-${randomUUID()}`]
        const claim = (peerId: string) => ({
          peerId,
          identityKey: null,
          ts: null,
          now: 10_000,
          minIntervalMs: 2_000,
        })
        assert.strictEqual(yield* store.admitRegistration({ ...claim(raced), now: 1_000 }), "admitted")
        // Another instance admitting `raced` now: its row locked until that commits.
        let commit: () => void = () => {}
        const committing = new Promise<void>((resolve) => {
          commit = resolve
        })
        let lockedRow: () => void = () => {}
        const rowLocked = new Promise<void>((resolve) => {
          lockedRow = resolve
        })
        const elsewhere = pool.transaction(async (tx) => {
          await tx.query(sql.unsafe`select 1 from peers where peer_id = ${raced} for update`)
          await tx.query(sql.unsafe`update peers set last_admitted_at = 9999 where peer_id = ${raced}`)
          lockedRow()
          await committing
        })
        yield* promise(() => rowLocked)
        // Sent together: one statement, whose snapshot still shows the admission at 1,000.
        const together = yield* Effect.all(
          [store.admitRegistration(claim(raced)), store.admitRegistration(claim(other))],
          {
            concurrency: "unbounded",
          },
        ).pipe(Effect.forkChild)
        yield* TestClock.withLive(
          eventually(
            promise(() =>
              pool.oneFirst(
                sql.type(std(Schema.Struct({ n: Schema.Int })))`
                  select count(*)::int as n from pg_stat_activity
                  where datname = current_database() and wait_event_type = 'Lock'
                    and query like '%insert into peers (peer_id, identity_key%'
                `,
              ),
            ).pipe(Effect.map((n) => (n === 1 ? true : undefined))),
            "the batch waiting for the other instance's lock",
          ),
        )
        commit()
        yield* promise(() => elsewhere)
        // Judged again alone against the row as it now stands: 10,000 is within 2 s of 9,999.
        assert.deepStrictEqual(yield* Fiber.join(together), ["too_many", "admitted"])
      }),
  )

  it.effect("closeTickets refuses a non-terminal state", () =>
    Effect.gen(function* () {
      const store = yield* Store
      const error = yield* Effect.flip(store.closeTickets(["1"], "queued"))
      assert.strictEqual(error.operation, "closeTickets")
    }),
  )
})
