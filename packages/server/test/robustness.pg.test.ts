import { assert, describe, it } from "@effect/vitest"
import { JobScheduler, Protocol, Store, Transport, TransportRedis } from "@picus/core"
import { deleteKeysWithPrefix, eventually, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { Cause, Context, Effect, Exit, Fiber, Layer, Option } from "effect"
import { createPool, type DatabasePool, sql } from "slonik"
import { PeerAccess } from "../src/access/PeerAccess.ts"
import { newClusterKey } from "../src/clusterKey.ts"
import { PgStore } from "../src/db/PgStore.ts"
import { GatewayFailed, makeGateway, untilSignal } from "../src/gateway/index.ts"
import { enrollmentTokensFrom } from "../src/tokens.ts"
import { freshDatabase } from "./support/database.ts"
import { rawPeer } from "./support/rawPeer.ts"

// No input stops service: a result the database refuses, a ticket the wire cannot carry and a
// session that fails each cost only themselves. On the real PostgreSQL and Redis.

const gatewayConfig = {
  serverId: "robust",
  clusterKey: newClusterKey(),
  leaseMs: 3_000,
  deliveryDeadlineMs: 60_000,
  deadlineSlackMs: 30_000,
  heartbeatMs: 200,
  graceMs: 5_000,
  enrollment: enrollmentTokensFrom("good-token"),
  batchSize: 64,
  staleRegisterMs: 30_000,
  reclaimIdleMs: 30_000,
  drainMs: 500,
  retryBaseMs: 50,
  retryMaxMs: 200,
}

const catalog = [
  { job_id: "one", name: "One", os: "linux", distro: "debian", command: "echo one", timeout_ms: 5_000 },
  { job_id: "two", name: "Two", os: "linux", distro: "debian", command: "echo two", timeout_ms: 5_000 },
]

/** A fresh database and key prefix; the transport can be wrapped to misbehave. */
const realServices = (wrap: (t: Transport["Service"]) => Transport["Service"] = (t) => t) => {
  const db = Effect.acquireRelease(
    Effect.promise(() => freshDatabase()),
    (d) => Effect.promise(() => d.drop()),
  )
  return Layer.unwrap(
    db.pipe(
      Effect.map((d) => {
        const prefix = testKeyPrefix()
        const transport = Layer.effect(
          Transport,
          Effect.gen(function* () {
            yield* Effect.addFinalizer(() =>
              Effect.promise(() => deleteKeysWithPrefix(testRedisUrl(), prefix)),
            )
            return wrap(yield* Transport)
          }),
        ).pipe(Layer.provide(TransportRedis.layerRedis({ url: testRedisUrl(), prefix })))
        const pool = Layer.effect(
          Pool,
          Effect.acquireRelease(
            Effect.promise(() => createPool(d.url, { maxPoolSize: 2 })),
            (p) => Effect.promise(() => p.end()),
          ),
        )
        return JobScheduler.layer({ maxInFlight: 4 }).pipe(
          Layer.provideMerge(PgStore.layer(d.url)),
          Layer.provideMerge(transport),
          Layer.provideMerge(pool),
          Layer.provideMerge(PeerAccess.layerOpen),
        )
      }),
    ),
  )
}

/** A plain pool on the test's database, for what the Store does not expose. */
class Pool extends Context.Service<Pool, DatabasePool>()("test/Pool") {}

const query = <A>(run: (pool: DatabasePool) => Promise<A>) =>
  Effect.flatMap(Pool, (pool: DatabasePool) => Effect.promise(() => run(pool)))

const waitFor = <A, E, R>(check: Effect.Effect<A | undefined, E, R>, what: string, ms = 10_000) =>
  eventually(check, what, { timeoutMs: ms })

/** A peer driven by hand that heartbeats (so is judged by silence), taking its jobs itself. */
const handPeer = (peerId: string) =>
  rawPeer(peerId, "good-token", { agentVersion: "test", jobs: 0 }).pipe(
    Effect.map(({ next, sendResult }) => ({ next, send: sendResult })),
  )

/** A gateway serving the test catalog. */
const serve = Effect.gen(function* () {
  const store = yield* Store
  yield* store.replaceCatalog(catalog)
  const gateway = yield* makeGateway(gatewayConfig)
  yield* Effect.forkScoped(gateway.run)
  return { store, gateway }
})

const ticketRow = (ticket: string) =>
  query((pool) =>
    pool.one(sql.unsafe`select state, close_reason from tickets where ticket = ${ticket}`),
  ) as Effect.Effect<{ state: string; close_reason: string | null }, never, Pool>

describe("no input stops service (postgres+redis)", () => {
  it.live(
    "a result the database refuses is set aside as a dead letter, its ticket fails, and the rest of its batch is recorded",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        // A refusal the wire schema cannot foresee: the database itself says no to one output.
        yield* query(async (pool) => {
          await pool.query(sql.unsafe`
            create function refuse_poison() returns trigger language plpgsql as $$
            begin
              if new.output = 'poison' then raise exception 'poisoned output'; end if;
              return new;
            end $$`)
          await pool.query(sql.unsafe`
            create trigger refuse_poison before insert on job_results
              for each row execute function refuse_poison()`)
        })
        const { store, gateway } = yield* serve
        const peer = yield* handPeer("p1")
        const [a, b] = [(yield* peer.next) as Protocol.Job, (yield* peer.next) as Protocol.Job]
        yield* peer.send(a.ticket, "poison")
        yield* peer.send(b.ticket, "fine")
        yield* waitFor(
          store
            .ticketState(b.ticket)
            .pipe(Effect.map((s) => (s._tag === "Some" && s.value === "succeeded" ? s : undefined))),
          "the good result recorded",
        )
        const poisoned = yield* waitFor(
          ticketRow(a.ticket).pipe(Effect.map((row) => (row.state === "failed" ? row : undefined))),
          "the poisoned ticket failed",
        )
        assert.include(poisoned.close_reason ?? "", "poisoned output")
        const letters = yield* transport.deadLetters(10)
        assert.strictEqual(letters.length, 1)
        assert.include(letters[0]!.reason, "poisoned output")
        assert.include(letters[0]!.payload, a.ticket)
        assert.strictEqual((yield* gateway.status).retrying, 0, "nothing left retrying")
        // The operator drops it once looked at.
        assert.strictEqual(yield* transport.dropDeadLetters([letters[0]!.id]), 1)
        assert.strictEqual((yield* transport.deadLetters(10)).length, 0)
      }).pipe(Effect.scoped, Effect.provide(realServices())),
    30_000,
  )

  it.live(
    "a ticket the wire cannot carry ends failed with its reason; the session keeps serving and shuts down",
    () =>
      Effect.gen(function* () {
        const { store, gateway } = yield* serve
        const peer = yield* handPeer("p1")
        for (const job of [(yield* peer.next) as Protocol.Job, (yield* peer.next) as Protocol.Job])
          yield* peer.send(job.ticket, "ok")
        // Written straight to the Store (an older version, a hand-made row): 9 KB, over the wire's 8 KiB.
        const { tickets } = yield* store.submitTickets({
          peerId: "p1",
          serverId: "test",
          jobs: [
            { name: "huge", command: `echo ${"x".repeat(9_000)}`, timeoutMs: 5_000 },
            { name: "after", command: "echo after", timeoutMs: 5_000 },
          ],
        })
        // No notice is sent: the holder finds them on its next keep-alive.
        const after = (yield* peer.next) as Protocol.Job
        assert.strictEqual(after.job.name, "after", "the next ticket is sent")
        const huge = yield* ticketRow(tickets[0]!.ticket)
        assert.strictEqual(huge.state, "failed")
        assert.include(huge.close_reason ?? "", "cannot be sent")
        assert.include(huge.close_reason ?? "", "8192")
        yield* peer.send(after.ticket, "after")
        yield* waitFor(
          store
            .ticketState(after.ticket)
            .pipe(Effect.map((s) => (s._tag === "Some" && s.value === "succeeded" ? s : undefined))),
          "the next result recorded",
        )
        yield* gateway.shutdown("test over").pipe(Effect.timeout("10 seconds"))
        const sessions = yield* store.sessions({ limit: 10 })
        assert.strictEqual(sessions[0]?.logoutReason, Protocol.LogoutReason.serverShutdown)
      }).pipe(Effect.scoped, Effect.provide(realServices())),
    30_000,
  )

  it.live(
    "a session that fails ends alone as server_error; the other peer is served and shutdown completes",
    () =>
      Effect.gen(function* () {
        const { store, gateway } = yield* serve
        yield* handPeer("bomb")
        yield* waitFor(
          store
            .sessions({ peerId: "bomb", limit: 1 })
            .pipe(Effect.map(([s]) => (s?.logoutReason === "server_error" ? s : undefined))),
          "the failed session logged out as server_error",
        )
        const good = yield* handPeer("good")
        for (const job of [(yield* good.next) as Protocol.Job, (yield* good.next) as Protocol.Job])
          yield* good.send(job.ticket, "ok")
        yield* waitFor(
          store
            .results({ peerId: "good", limit: 10 })
            .pipe(Effect.map((r) => (r.length === 2 ? r : undefined))),
          "the good peer's results",
        )
        // The failed session's tickets are open still: they go to the peer's next session.
        const open = yield* query((pool) =>
          pool.oneFirst(
            sql.unsafe`select count(*)::int from tickets where peer_id = 'bomb' and state in ('queued', 'delivered')`,
          ),
        )
        assert.strictEqual(open, 2)
        yield* gateway.shutdown("test over").pipe(Effect.timeout("10 seconds"))
        const [goodSession] = yield* store.sessions({ peerId: "good", limit: 1 })
        assert.strictEqual(goodSession?.logoutReason, Protocol.LogoutReason.serverShutdown)
      }).pipe(
        Effect.scoped,
        Effect.provide(
          // Sending bomb its jobs fails with a defect (a bug, say): only its session may suffer.
          realServices((t) => ({
            ...t,
            sendToPeer: (peerId, payload) =>
              peerId === "bomb" && payload.includes('"ticket"')
                ? Effect.die(new Error("a bug while sending"))
                : t.sendToPeer(peerId, payload),
            sendManyToPeer: (peerId, payloads) =>
              peerId === "bomb" && payloads.some((p) => p.includes('"ticket"'))
                ? Effect.die(new Error("a bug while sending"))
                : t.sendManyToPeer(peerId, payloads),
          })),
        ),
      ),
    30_000,
  )
})

describe("the gateway's own loops", () => {
  it.effect("a gateway whose loops die fails its wait for the signal, so the process exits non-zero", () =>
    Effect.gen(function* () {
      const running = yield* Effect.forkChild(Effect.die(new Error("loop broke")))
      const exit = yield* Effect.exit(untilSignal(running, Effect.never))
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? Cause.findErrorOption(exit.cause) : Option.none()
      assert.isTrue(Option.isSome(error) && error.value instanceof GatewayFailed)
      assert.include(Option.isSome(error) ? error.value.message : "", "loop broke")
      yield* Fiber.interrupt(running)
    }),
  )
  it.effect("the signal wins while the gateway serves", () =>
    Effect.gen(function* () {
      const running = yield* Effect.forkChild(Effect.never)
      assert.strictEqual(yield* untilSignal(running, Effect.succeed("SIGINT" as const)), "SIGINT")
      yield* Fiber.interrupt(running)
    }),
  )
})
