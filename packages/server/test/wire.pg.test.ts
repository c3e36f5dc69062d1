import { randomUUID } from "node:crypto"
import { assert, layer } from "@effect/vitest"
import { Protocol, Store } from "@picus/core"
import { Arbitrary, Effect, Layer, Schema } from "effect"
import { layer as pgStoreLayer } from "../src/db/PgStore.ts"
import { freshDatabase } from "./support/database.ts"

// Whatever the wire schemas accept, PostgreSQL can store: messages generated from the schemas
// themselves go through the PgStore as the server would write them, and none may fail.

const database = Effect.acquireRelease(
  Effect.promise(() => freshDatabase()),
  (db) => Effect.promise(() => db.drop()),
)
const storeLayer = Layer.unwrap(Effect.map(database, (db) => pgStoreLayer(db.url)))

const SERVER_ID = "wire-test"
const LEASE_MS = 60_000

/** Characters a generated string rarely holds but a peer may send: control, surrogates, astral. */
const AWKWARD = [
  "\u0000",
  "\u0001",
  "\u007f",
  "\ud800",
  "\udfff",
  "\ufffe",
  "\u{10ffff}",
  "😀",
  "\u202e",
  "'",
  "\\",
]
/** A 4-byte character: a string of these at a code point limit is at its largest in bytes. */
const WIDE = "😀"

/** A string as UTF-8 carries it to PostgreSQL: a lone surrogate becomes U+FFFD. */
const asUtf8 = (text: string) => new TextDecoder().decode(new TextEncoder().encode(text))

const intUpTo = (max: number) =>
  Arbitrary.schema(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: max })))

/**
 * Integers at the edges of the column types and of a JS Date. Derived integers stay small, so the
 * edges are put in on purpose.
 */
const EDGES = [
  -1,
  255,
  2 ** 31 - 1,
  2 ** 31,
  -(2 ** 31),
  -(2 ** 31) - 1,
  2 ** 32,
  8.64e15,
  8.64e15 + 1,
  Number.MAX_SAFE_INTEGER,
  -Number.MAX_SAFE_INTEGER,
]

type Limit = { readonly codePoints: number } | { readonly bytes: number } | "integer"

/**
 * The schema's own arbitrary, with one field (sometimes) made awkward: a string given an odd
 * character or stretched to its limit in 4-byte characters, an integer set to an edge value. Only
 * values the schema still accepts are kept.
 */
const fromWire = <S extends Schema.Top>(schema: S, fields: Readonly<Record<string, Limit>>) => {
  const keys = Object.keys(fields)
  const is = Schema.is(schema)
  return Arbitrary.all({
    value: Arbitrary.schema(schema),
    field: intUpTo(keys.length),
    awkward: intUpTo(Math.max(AWKWARD.length, EDGES.length - 1)),
    at: intUpTo(1_000_000),
  }).pipe(
    Arbitrary.map(({ value, field, awkward, at }) => {
      const key = keys[field]
      const limit = key === undefined ? undefined : fields[key]
      const record = value as Record<string, unknown>
      if (key === undefined || limit === undefined) return value
      if (limit === "integer") return { ...record, [key]: EDGES[awkward % EDGES.length] } as S["Type"]
      const text = record[key]
      if (typeof text !== "string") return value
      if (awkward >= AWKWARD.length) {
        const count = "bytes" in limit ? Math.floor(limit.bytes / 4) : limit.codePoints
        return { ...record, [key]: WIDE.repeat(count) } as S["Type"]
      }
      const i = at % (text.length + 1)
      return { ...record, [key]: `${text.slice(0, i)}${AWKWARD[awkward]}${text.slice(i)}` } as S["Type"]
    }),
    Arbitrary.filter((value): value is S["Type"] => is(value)),
  )
}

const id = { codePoints: Protocol.MAX_ID_LENGTH }
const label = { codePoints: Protocol.MAX_LABEL_LENGTH }
const registers = fromWire(Protocol.Register, {
  peer_id: id,
  server_ip: label,
  os: label,
  distro: label,
  hostname: label,
  agent_version: label,
})
const results = fromWire(Protocol.Result, {
  ticket: id,
  peer_id: id,
  result: { bytes: Protocol.MAX_RESULT_BYTES },
  exit_code: "integer",
  started_at: "integer",
  finished_at: "integer",
})
const logouts = fromWire(Protocol.Logout, { peer_id: id, reason: { codePoints: Protocol.MAX_REASON_LENGTH } })
const jobSpecs = fromWire(Protocol.JobSpec, {
  name: label,
  os: label,
  distro: label,
  command: { bytes: Protocol.MAX_COMMAND_BYTES },
  timeout_ms: "integer",
})

/** Fails the test with the shrunk counterexample when the property does not hold. */
const check = <A, E>(
  arbitrary: Arbitrary.Arbitrary<A>,
  property: (value: A) => Effect.Effect<void, E, Store>,
) =>
  Effect.gen(function* () {
    const outcome = yield* Arbitrary.checkEffect(arbitrary, (value) => Effect.as(property(value), true), {
      runs: 100,
      maxShrinks: 200,
    })
    const failure = Arbitrary.formatCheckFailure(outcome)
    if (failure !== undefined) assert.fail(failure)
  })

const login = (peerId: string, fields: { readonly os?: string; readonly distro?: string } = {}) =>
  Effect.gen(function* () {
    const store = yield* Store
    const sessionId = randomUUID()
    const { epoch } = yield* store.login({
      peerId,
      sessionId,
      serverId: SERVER_ID,
      serverIp: null,
      os: fields.os ?? "linux",
      distro: fields.distro ?? "debian",
      hostname: null,
      agentVersion: null,
      leaseMs: LEASE_MS,
    })
    return { sessionId, epoch }
  })

layer(storeLayer, { timeout: 120_000 })("every message the wire schemas accept is stored", (it) => {
  it.effect("register: a rejection and a login", () =>
    check(registers, (m) =>
      Effect.gen(function* () {
        const store = yield* Store
        yield* store.logRejected({
          peerId: m.peer_id,
          reason: Protocol.RejectReason.unknownToken,
          serverId: SERVER_ID,
          serverIp: m.server_ip,
        })
        yield* store.login({
          peerId: m.peer_id,
          sessionId: randomUUID(),
          serverId: SERVER_ID,
          serverIp: m.server_ip,
          os: m.os ?? null,
          distro: m.distro ?? null,
          hostname: m.hostname ?? null,
          agentVersion: m.agent_version ?? null,
          leaseMs: LEASE_MS,
        })
      }),
    ),
  )

  it.effect("logout: its reason", () =>
    check(logouts, (m) =>
      Effect.gen(function* () {
        const store = yield* Store
        const { sessionId, epoch } = yield* login(m.peer_id)
        const closed = yield* store.logout({
          peerId: m.peer_id,
          sessionId,
          epoch,
          reason: m.reason ?? Protocol.LogoutReason.peerShutdown,
          serverId: SERVER_ID,
        })
        assert.isTrue(closed)
      }),
    ),
  )

  it.effect("job spec: submitted, and as a catalog job", () =>
    check(jobSpecs, (spec) =>
      Effect.gen(function* () {
        const store = yield* Store
        const peerId = `jobs-${randomUUID()}`
        const { sessionId } = yield* login(peerId, { os: spec.os, distro: spec.distro })
        const timeoutMs = spec.timeout_ms ?? 30_000
        const { tickets } = yield* store.submitTickets({
          peerId,
          serverId: SERVER_ID,
          jobs: [{ name: spec.name, command: spec.command, timeoutMs }],
        })
        assert.strictEqual(tickets.length, 1)
        const job = { job_id: "wire-job", ...spec, timeout_ms: timeoutMs }
        yield* store.replaceCatalog([job])
        const stored = {
          ...job,
          name: asUtf8(job.name),
          os: asUtf8(job.os),
          distro: asUtf8(job.distro),
          command: asUtf8(job.command),
        }
        assert.deepStrictEqual(yield* store.jobsFor(spec.os, spec.distro), [stored])
        const created = yield* store.createTickets({ peerId, sessionId, serverId: SERVER_ID, jobs: [job] })
        assert.strictEqual(created.length, 1)
      }),
    ),
  )

  it.effect("result: recorded for its ticket, and answered for an unknown one", () =>
    check(results, (m) =>
      Effect.gen(function* () {
        const store = yield* Store
        const { sessionId, epoch } = yield* login(m.peer_id)
        const { tickets } = yield* store.submitTickets({
          peerId: m.peer_id,
          serverId: SERVER_ID,
          jobs: [{ name: "job", command: "true", timeoutMs: 1_000 }],
        })
        const [ticket] = tickets
        assert.isDefined(ticket)
        const record = {
          peerId: m.peer_id,
          sessionId,
          epoch,
          serverId: SERVER_ID,
          status: m.status ?? "succeeded",
          exitCode: m.exit_code ?? null,
          output: m.result,
          truncated: m.truncated ?? false,
          startedAt: m.started_at ?? null,
          finishedAt: m.finished_at ?? null,
        }
        const outcomes = yield* store.recordResults([
          { ...record, ticket: ticket?.ticket ?? "" },
          { ...record, ticket: m.ticket },
        ])
        assert.strictEqual(outcomes[0], "recorded")
      }),
    ),
  )
})
