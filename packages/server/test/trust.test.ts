import { assert, describe, it } from "@effect/vitest"
import {
  hashSecret,
  JobScheduler,
  Protocol,
  Store,
  sessionTokenOf,
  Transport,
  TransportMemory,
  Trust,
} from "@picus/core"
import { eventually } from "@picus/core/testing"
import { Effect, Exit, Layer, Option, Redacted, Schema, Scope } from "effect"
import { createPool, type DatabasePool, sql } from "slonik"
import { PeerAccess } from "../src/access/PeerAccess.ts"
import { clusterKeyOf, endorsementText, newClusterKey } from "../src/clusterKey.ts"
import { PgStore } from "../src/db/PgStore.ts"
import { type GatewayConfig, makeGateway } from "../src/gateway/index.ts"
import { enrollmentTokensFrom } from "../src/tokens.ts"
import { freshDatabase } from "./support/database.ts"
import { compositions, type ServerServices } from "./support/layers.ts"
import {
  type Answer,
  decodeServer,
  newIdentity,
  recording,
  registerOnce,
  rejectionOf,
  sealedPeer,
} from "./support/trustPeer.ts"

// Signatures, identity binding, anti-replay and sealed sessions, on the server's side. Each check
// is shown stopping its attack, and the same attack is shown getting through a gateway built
// without that check (GatewayConfig.weakened, which only tests set), so each test can fail.

const clusterKey = newClusterKey()

const base: GatewayConfig = {
  serverId: "trust-server",
  clusterKey,
  leaseMs: 3_000,
  deliveryDeadlineMs: 60_000,
  deadlineSlackMs: 30_000,
  heartbeatMs: 200,
  graceMs: 5_000,
  enrollment: enrollmentTokensFrom("good-token"),
  batchSize: 64,
  staleRegisterMs: 30_000,
  reclaimIdleMs: 30_000,
  drainMs: 300,
  // Most tests register one peer id several times in a row; the rate limit has its own test.
  registerIntervalMs: 0,
}

const TableRow = Schema.toStandardSchemaV1(Schema.Struct({ name: Schema.String }))
const CountRow = Schema.toStandardSchemaV1(Schema.Struct({ count: Schema.Int }))

const catalog = [
  { job_id: "one", name: "One", os: "linux", distro: "debian", command: "echo one", timeout_ms: 5_000 },
  { job_id: "two", name: "Two", os: "linux", distro: "debian", command: "echo two", timeout_ms: 5_000 },
]

/**
 * A gateway serving the test catalog, with a copy of every payload it writes for a peer (as it
 * reaches the transport: after signing). `store` replaces the Store it is built over, if given.
 */
const serve = (config: GatewayConfig, store?: Store["Service"]) =>
  Effect.gen(function* () {
    const sent: Array<string> = []
    const given = yield* Store
    yield* given.replaceCatalog(catalog)
    const transport = yield* Transport
    const gateway = yield* makeGateway(config).pipe(
      Effect.provideService(Transport, recording(transport, sent)),
      Effect.provideService(Store, store ?? given),
    )
    yield* Effect.forkScoped(gateway.run)
    return { gateway, sent }
  })

const accepted = (answer: Answer) => {
  assert.strictEqual(Protocol.serverMessageKind(answer.message), "register_accepted", answer.raw)
  return answer.message as Protocol.RegisterAccepted
}

const sessionsOf = (peerId: string) => Effect.flatMap(Store, (store) => store.sessions({ peerId, limit: 20 }))

const resultOf = (ticket: string) =>
  Effect.flatMap(Store, (store) =>
    store.results({ limit: 100 }).pipe(Effect.map((rows) => rows.find((r) => r.ticket === ticket))),
  )

const waitForResult = (ticket: string) =>
  eventually(resultOf(ticket), `the result of ticket ${ticket}`, { timeoutMs: 10_000 })

const jobsOf = (peer: { readonly next: Effect.Effect<Protocol.ServerMessage, unknown> }, count: number) =>
  Effect.gen(function* () {
    const jobs: Array<Protocol.Job> = []
    while (jobs.length < count) {
      const m = yield* peer.next
      if (Protocol.isJob(m)) jobs.push(m)
    }
    return jobs
  })

// The embedded composition runs the same gateway over PGlite: memory and the real services cover
// the two Store implementations these checks depend on.
const covered = compositions.filter(([name]) => name !== "embedded")

describe.each(covered)("signatures and identity (%s)", (_name, layer) => {
  it.live(
    "every message the server writes for a peer is signed by the cluster key (a sealed session's own: MACed under its token); acceptances name it and endorse it after a rotation",
    () =>
      Effect.gen(function* () {
        const transport = yield* Transport
        const old = Trust.newPrivateKey()
        const rotated = clusterKeyOf(clusterKey.seed, { seed: Redacted.make(old), where: "previous" })
        const { gateway, sent } = yield* serve({
          ...base,
          clusterKey: rotated,
          graceMs: 400,
          heartbeatMs: 100,
        })

        // A sealed session (reply stream, jobs), a seed peer (inbox, and a heartbeat from the
        // server: a seed peer never speaks unasked), and refusals to both kinds of stream.
        // Neither peer heartbeats (no agent_version): neither is logged out for silence meanwhile.
        const peer = yield* sealedPeer("sealed-1", { seed: true })
        const jobs = yield* jobsOf(peer, 2)
        const seed = yield* registerOnce({ peerId: "seed-1", nonce: null, seed: true })
        accepted(seed)
        const refusedByReply = yield* registerOnce({ peerId: "bad-1", token: "wrong" })
        assert.strictEqual(rejectionOf(refusedByReply), Protocol.RejectReason.unknownToken)
        const refusedInInbox = yield* registerOnce({ peerId: "bad-2", token: "wrong", nonce: null })
        assert.strictEqual(rejectionOf(refusedInInbox), Protocol.RejectReason.unknownToken)
        const seedInbox = yield* transport.inboxReader("seed-1")
        yield* eventually(
          seedInbox
            .read("0-0", { count: 100, blockMs: 200 })
            .pipe(Effect.map((es) => es.some((e) => e.payload.includes('"heartbeat"')) || undefined)),
          "a heartbeat from the server to the silent seed peer",
          { timeoutMs: 5_000 },
        )
        yield* gateway.shutdown("rotation test done")
        yield* eventually(
          Effect.sync(() => sent.filter((p) => p.includes('"shutdown"')).length >= 2 || undefined),
          "a shutdown for each session",
        )

        const kinds = new Set(sent.map((p) => Protocol.serverMessageKind(decodeServer(p))))
        assert.deepStrictEqual([...kinds].sort(), [
          "heartbeat",
          "job",
          "register_accepted",
          "register_rejected",
          "shutdown",
        ])
        // Signed by the cluster key, except the sealed session's own messages after its acceptance:
        // those carry the server's MAC under that session's token, which only it and the cluster hold.
        let maced = 0
        for (const payload of sent) {
          const kind = Protocol.serverMessageKind(decodeServer(payload))
          if (payload.includes(`"token":"${peer.sessionId}"`) && kind !== "register_accepted") {
            assert.strictEqual(Trust.checkMacFromServer(payload, peer.sessionToken), "valid", payload)
            assert.strictEqual(Trust.checkMacFromServer(payload, `${peer.sessionToken}x`), "invalid")
            assert.strictEqual(Trust.checkMac(payload, peer.sessionToken), "invalid", "not a peer's MAC")
            maced++
            continue
          }
          assert.strictEqual(Trust.checkSignature(payload, rotated.publicKey), "valid", payload)
          assert.strictEqual(Trust.checkSignature(payload, rotated.previous!.publicKey), "invalid")
        }
        assert.isAtLeast(maced, 3, "the sealed session's jobs and shutdown")
        assert.strictEqual(peer.accepted.cluster_key, rotated.publicKey)
        assert.isTrue(
          Trust.verifyBytes(
            endorsementText(rotated.publicKey),
            peer.accepted.key_endorsement ?? "",
            Trust.signingKeyOf(old)!.publicKey,
          ),
          "the previous key endorses the new one",
        )
        // A sealed session's token reaches the peer only sealed: its messages carry the session id.
        assert.isTrue(sent.every((p) => !p.includes(peer.sessionToken)))
        assert.deepStrictEqual(
          jobs.map((j) => j.token),
          [peer.sessionId, peer.sessionId],
        )
        assert.strictEqual(peer.accepted.session_id, peer.sessionId)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "weakened: a gateway that does not sign sends what the check above tells apart",
    () =>
      Effect.gen(function* () {
        const { sent } = yield* serve({ ...base, weakened: { unsigned: true } })
        yield* sealedPeer("sealed-1").pipe(Effect.flatMap((p) => jobsOf(p, 1)))
        accepted(yield* registerOnce({ peerId: "seed-1", nonce: null, seed: true }))
        assert.isAbove(sent.length, 2)
        for (const payload of sent)
          assert.strictEqual(Trust.checkSignature(payload, clusterKey.publicKey), "unsigned")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a peer id is bound to the key of its first signed registration: unsigned, foreign-signed and forged ones are refused",
    () =>
      Effect.gen(function* () {
        yield* serve(base)
        const owner = newIdentity()
        const other = newIdentity()
        accepted(yield* registerOnce({ peerId: "bound", identity: owner }))
        const refusals = [
          yield* registerOnce({ peerId: "bound" }),
          yield* registerOnce({ peerId: "bound", nonce: null }),
          yield* registerOnce({ peerId: "bound", identity: other }),
          // Names the owner's key, signed by another.
          yield* registerOnce({ peerId: "bound", identity: other, peerKey: owner.publicKey }),
          // Signed by the owner, then changed on the way.
          yield* registerOnce({
            peerId: "bound",
            identity: owner,
            tamper: (p) => p.replace('"10.1.2.3"', '"10.6.6.6"'),
          }),
        ]
        for (const answer of refusals)
          assert.strictEqual(rejectionOf(answer), Protocol.RejectReason.wrongIdentity, answer.raw)
        assert.strictEqual((yield* sessionsOf("bound")).length, 1, "no refused registration opened a session")
        accepted(yield* registerOnce({ peerId: "bound", identity: owner }))
        // A signed registration naming a key must be signed by it even for an id bound to none.
        assert.strictEqual(
          rejectionOf(yield* registerOnce({ peerId: "fresh", identity: other, peerKey: owner.publicKey })),
          Protocol.RejectReason.wrongIdentity,
        )
        // Unsigned registrations of ids bound to no key work as before (seed peers, the load generator).
        accepted(yield* registerOnce({ peerId: "seed-like" }))
        accepted(yield* registerOnce({ peerId: "seed-like", nonce: null }))
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "weakened: without the identity check, the same registrations take over a bound peer id",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* serve({ ...base, weakened: { identity: true } })
        const owner = newIdentity()
        // Bound by the Store itself, as the first signed registration of a real gateway binds it.
        assert.strictEqual(
          yield* store.admitRegistration({
            peerId: "bound",
            identityKey: owner.publicKey,
            ts: 1,
            now: Date.now(),
            minIntervalMs: 0,
          }),
          "admitted",
        )
        accepted(yield* registerOnce({ peerId: "bound" }))
        accepted(yield* registerOnce({ peerId: "bound", identity: newIdentity() }))
        accepted(yield* registerOnce({ peerId: "bound", identity: newIdentity(), peerKey: owner.publicKey }))
        assert.strictEqual((yield* sessionsOf("bound")).length, 3)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a signed registration is refused when replayed, older than the last one, or far off the clock",
    () =>
      Effect.gen(function* () {
        yield* serve(base)
        const identity = newIdentity()
        const first = yield* registerOnce({ peerId: "replayed", identity })
        accepted(first)
        const replay = yield* first.again
        assert.strictEqual(rejectionOf(replay), Protocol.RejectReason.replayed, "the same payload again")
        const ts = (JSON.parse(first.payload) as { ts: number }).ts
        assert.strictEqual(
          rejectionOf(yield* registerOnce({ peerId: "replayed", identity, ts: ts - 1_000 })),
          Protocol.RejectReason.replayed,
          "older",
        )
        for (const off of [6 * 60_000, -6 * 60_000]) {
          assert.strictEqual(
            rejectionOf(
              yield* registerOnce({ peerId: "off-clock", identity: newIdentity(), ts: Date.now() + off }),
            ),
            Protocol.RejectReason.replayed,
            `${off / 60_000} min off the clock`,
          )
        }
        assert.strictEqual((yield* sessionsOf("replayed")).length, 1, "the replays opened no session")
        assert.strictEqual((yield* sessionsOf("off-clock")).length, 0)
        accepted(yield* registerOnce({ peerId: "replayed", identity }))
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "weakened: without the ts check, a captured registration replayed opens a session again",
    () =>
      Effect.gen(function* () {
        yield* serve({ ...base, weakened: { replay: true } })
        const first = yield* registerOnce({ peerId: "replayed", identity: newIdentity() })
        accepted(first)
        accepted(yield* first.again)
        assert.strictEqual((yield* sessionsOf("replayed")).length, 2, "the replay replaced the session")
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  /** The Store, with the database token "bound-token" bound to peer id "owner" (a provisioned peer's). */
  const boundTokenStore = Effect.gen(function* () {
    const store = yield* Store
    const hash = hashSecret("bound-token")
    yield* store.createToken({ name: "owner's", prefix: "bound-to", hash })
    return {
      ...store,
      findActiveToken: (h: Uint8Array) =>
        store
          .findActiveToken(h)
          .pipe(
            Effect.map(
              Option.map((t) => (Buffer.from(h).equals(Buffer.from(hash)) ? { ...t, peerId: "owner" } : t)),
            ),
          ),
    } satisfies Store["Service"]
  })

  it.live("a token bound to a peer id registers that id only", () =>
    Effect.gen(function* () {
      yield* serve(base, yield* boundTokenStore)
      assert.strictEqual(
        rejectionOf(yield* registerOnce({ peerId: "intruder", token: "bound-token" })),
        Protocol.RejectReason.wrongPeer,
      )
      assert.strictEqual(
        rejectionOf(
          yield* registerOnce({ peerId: "intruder", token: "bound-token", identity: newIdentity() }),
        ),
        Protocol.RejectReason.wrongPeer,
      )
      accepted(yield* registerOnce({ peerId: "owner", token: "bound-token", nonce: null }))
      assert.strictEqual((yield* sessionsOf("intruder")).length, 0)
    }).pipe(Effect.scoped, Effect.provide(layer())),
  )

  it.live("weakened: without the binding check, the bound token registers any peer id", () =>
    Effect.gen(function* () {
      yield* serve({ ...base, weakened: { peerBinding: true } }, yield* boundTokenStore)
      accepted(yield* registerOnce({ peerId: "intruder", token: "bound-token" }))
    }).pipe(Effect.scoped, Effect.provide(layer())),
  )

  it.live("registrations of one peer id are admitted at most once per interval; others are not held up", () =>
    Effect.gen(function* () {
      // Far longer than the test takes, so that it never sees the interval pass.
      yield* serve({ ...base, registerIntervalMs: 60_000 })
      const identity = newIdentity()
      accepted(yield* registerOnce({ peerId: "eager", identity }))
      for (const again of [
        yield* registerOnce({ peerId: "eager", identity }),
        yield* registerOnce({ peerId: "eager", identity, box: Trust.newBoxKeyPair() }),
      ])
        assert.strictEqual(rejectionOf(again), Protocol.RejectReason.tooMany)
      accepted(yield* registerOnce({ peerId: "seed-eager", nonce: null }))
      assert.strictEqual(
        rejectionOf(yield* registerOnce({ peerId: "seed-eager", nonce: null })),
        Protocol.RejectReason.tooMany,
      )
      accepted(yield* registerOnce({ peerId: "someone-else", identity: newIdentity() }))
      assert.strictEqual((yield* sessionsOf("eager")).length, 1)
      assert.isTrue(Protocol.isRetryableRejection(Protocol.RejectReason.tooMany))
    }).pipe(Effect.scoped, Effect.provide(layer())),
  )

  it.live("weakened: without the interval, one credential opens a session per registration", () =>
    Effect.gen(function* () {
      yield* serve({ ...base, registerIntervalMs: 0 })
      const identity = newIdentity()
      for (let i = 0; i < 3; i++) accepted(yield* registerOnce({ peerId: "eager", identity }))
      assert.strictEqual((yield* sessionsOf("eager")).length, 3)
    }).pipe(Effect.scoped, Effect.provide(layer())),
  )
})

describe.each(covered)("sealed sessions (%s)", (_name, layer) => {
  it.live(
    "a sealed session takes only messages with its id and a valid MAC; the token in the clear is refused too",
    () =>
      Effect.gen(function* () {
        yield* serve(base)
        const peer = yield* sealedPeer("sealed-1")
        const [first, second] = yield* jobsOf(peer, 2)
        for (const how of [
          { mac: "none" },
          { mac: "wrong-token" },
          { mac: "tampered" },
          // What an unsealed session's peer sends: the secret token itself.
          { mac: "none", token: peer.sessionToken },
          // The MAC is right, but the message names no session of this peer.
          { token: "another-session" },
        ] as const)
          yield* peer.result(first!.ticket, how)
        // Each peer's messages are handled in order: once this one is in, those before were judged.
        yield* peer.result(second!.ticket)
        yield* waitForResult(second!.ticket)
        assert.isUndefined(yield* resultOf(first!.ticket), "no forged result was recorded")
        yield* peer.result(first!.ticket)
        assert.strictEqual((yield* waitForResult(first!.ticket)).output, `ran ${first!.ticket}`)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "weakened: without the MAC check, anyone who read the session id from Redis records results for it",
    () =>
      Effect.gen(function* () {
        yield* serve({ ...base, weakened: { mac: true } })
        const peer = yield* sealedPeer("sealed-1")
        const [first] = yield* jobsOf(peer, 1)
        yield* peer.result(first!.ticket, { mac: "none" })
        yield* waitForResult(first!.ticket)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )

  it.live(
    "a sealed session taken over by another instance still takes only MACed messages, and is told so",
    () =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.replaceCatalog(catalog)
        const instance = (serverId: string, weakened?: GatewayConfig["weakened"]) =>
          Effect.gen(function* () {
            const scope = yield* Scope.make()
            yield* Effect.addFinalizer(() => Scope.close(scope, Exit.void))
            const gateway = yield* makeGateway({
              ...base,
              serverId,
              leaseMs: 900,
              ...(weakened ? { weakened } : {}),
            }).pipe(Scope.provide(scope))
            yield* Effect.forkIn(gateway.run, scope)
            return { die: Scope.close(scope, Exit.void) }
          })
        const a = yield* instance("a")
        const peer = yield* sealedPeer("sealed-1")
        const [first, second] = yield* jobsOf(peer, 2)
        yield* instance("b")
        yield* a.die
        // b takes the session over (its lease runs out) and tells the peer, naming the session.
        const told = yield* peer.next
        assert.strictEqual(Protocol.serverMessageKind(told), "heartbeat")
        assert.strictEqual((told as Protocol.Heartbeat).server_id, "b")
        assert.strictEqual((told as Protocol.Heartbeat).token, peer.sessionId)
        yield* peer.result(first!.ticket, { mac: "none" })
        yield* peer.result(first!.ticket, { mac: "wrong-token" })
        yield* peer.result(second!.ticket)
        yield* waitForResult(second!.ticket)
        assert.isUndefined(yield* resultOf(first!.ticket))
        const owner = Option.getOrThrow(yield* store.sessionOf("sealed-1"))
        assert.strictEqual(owner.ownerId, "b")
        assert.isTrue(owner.sealed)
      }).pipe(Effect.scoped, Effect.provide(layer())),
    30_000,
  )
})

describe("nothing that speaks for a peer is kept in PostgreSQL (postgres)", () => {
  /** The real Store on a fresh database, with a plain pool on it for the scan. */
  const withDatabase = <A, E>(
    body: (
      scan: (needle: string) => Effect.Effect<ReadonlyArray<string>>,
      pool: DatabasePool,
    ) => Effect.Effect<A, E, ServerServices | Scope.Scope>,
  ) =>
    Effect.gen(function* () {
      const db = yield* Effect.acquireRelease(
        Effect.promise(() => freshDatabase()),
        (d) => Effect.promise(() => d.drop()),
      )
      const services = JobScheduler.layer({ maxInFlight: 4 }).pipe(
        Layer.provideMerge(PgStore.layer(db.url)),
        Layer.provideMerge(TransportMemory.layerMemory),
        Layer.merge(PeerAccess.layerOpen),
      )
      const pool = yield* Effect.acquireRelease(
        Effect.promise(() => createPool(db.url, { maxPoolSize: 2 })),
        (p) => Effect.promise(() => p.end()),
      )
      /** The tables whose rows, as text, contain `needle`. */
      const scan = (needle: string) =>
        Effect.promise(async () => {
          const tables = await pool.anyFirst(sql.type(TableRow)`
            select table_name as name from information_schema.tables
            where table_schema = 'public' and table_type = 'BASE TABLE' order by table_name
          `)
          const found: Array<string> = []
          for (const table of tables) {
            const hits = await pool.oneFirst(sql.type(CountRow)`
              select count(*)::int as count from ${sql.identifier([table])} t
              where strpos(t::text, ${needle}) > 0
            `)
            if (hits > 0) found.push(table)
          }
          return found
        })
      return yield* body(scan, pool).pipe(Effect.provide(services))
    }).pipe(Effect.scoped)

  const secretsOf = (sessionToken: string) => {
    const key = Buffer.from(Trust.sessionKeyOf(Redacted.value(clusterKey.seed)))
    return [
      sessionToken,
      key.toString("hex"),
      key.toString("base64url"),
      key.toString("base64"),
      Redacted.value(clusterKey.seed),
    ]
  }

  it.live(
    "after sessions (sealed and not) with results and logouts, no table holds a session token, the session key or the cluster key",
    () =>
      withDatabase((scan) =>
        Effect.gen(function* () {
          const { gateway } = yield* serve(base)
          const sealed = yield* sealedPeer("sealed-1")
          for (const job of yield* jobsOf(sealed, 2)) yield* sealed.result(job.ticket)
          const plain = accepted(yield* registerOnce({ peerId: "plain-1", nonce: null }))
          const transport = yield* Transport
          yield* transport.sendUplink(
            Protocol.encodeMessage({ msg: "logout", peer_id: "plain-1", token: plain.token, reason: "done" }),
          )
          yield* eventually(
            Effect.flatMap(Store, (s) => s.results({ limit: 10 })).pipe(
              Effect.map((rows) => rows.length >= 2 || undefined),
            ),
            "the sealed peer's results",
          )
          yield* eventually(
            sessionsOf("plain-1").pipe(Effect.map((s) => s[0]?.logoutReason === "done" || undefined)),
            "the plain peer's logout",
          )
          yield* gateway.shutdown("scan")
          for (const secret of [...secretsOf(sealed.sessionToken), ...secretsOf(plain.token)]) {
            assert.deepStrictEqual(yield* scan(secret), [], "a secret is in the database")
          }
          assert.isAbove((yield* scan("sealed-1")).length, 2, "the scan reads the tables the sessions wrote")
        }),
      ),
    30_000,
  )

  it.live(
    "weakened: the scan finds a token or key kept the way the dropped cluster_keys table kept one",
    () =>
      withDatabase((scan, pool) =>
        Effect.gen(function* () {
          const token = sessionTokenOf(Trust.sessionKeyOf(Redacted.value(clusterKey.seed)), "some-session")
          const key = Buffer.from(Trust.sessionKeyOf(Redacted.value(clusterKey.seed)))
          yield* Effect.promise(() =>
            pool.query(sql.unsafe`create table kept_keys (name text primary key, key bytea not null)`),
          )
          yield* Effect.promise(() =>
            pool.query(sql.unsafe`insert into kept_keys values ('session', ${sql.binary(key)})`),
          )
          yield* Effect.flatMap(Store, (s) =>
            s.logRejected({ peerId: "p", reason: `bad ${token}`, serverId: "s", serverIp: null }),
          )
          assert.deepStrictEqual(yield* scan(key.toString("hex")), ["kept_keys"])
          assert.deepStrictEqual(yield* scan(token), ["registration_log"])
        }),
      ),
  )
})
