import { Protocol } from "@picus/core"
import { Arbitrary, Effect } from "effect"
import fc from "fast-check"

/**
 * Hostile uplink entries. Shapes come from fast-check and from the wire schemas' own arbitraries
 * (valid messages, then broken); what only the run knows (the good peers' ids, session tokens and
 * sent messages) is filled in when an entry is built, through a `World`.
 */

export const KINDS = [
  "malformed_json",
  "not_an_object",
  "unknown_msg",
  "wrong_type",
  "over_limit",
  "nul_byte",
  "invalid_utf8",
  "forged_token",
  "cross_peer_ticket",
  "replay",
  "bad_enrollment",
  "valid_register",
  "replayed_register",
  "oversized",
] as const
export type Kind = (typeof KINDS)[number]

/** Kinds whose entries the server may accept: they open sessions. Kept a small fraction. */
export const VALID_KINDS: ReadonlySet<Kind> = new Set(["valid_register", "replayed_register"])

/** What the good side of the run has shown so far. */
export interface World {
  /** The enrollment token the good peers use. */
  readonly token: string
  readonly peerIds: ReadonlyArray<string>
  /** The session token each good peer quoted last. */
  readonly sessions: ReadonlyMap<string, string>
  /** Recent payloads the good peers sent (results and heartbeats), for replays. */
  readonly sent: ReadonlyArray<string>
  /** Registrations the good peers sent. */
  readonly registers: ReadonlyArray<string>
  /** Tickets submitted to the good peers, with their peer. */
  readonly tickets: ReadonlyArray<{ readonly ticket: string; readonly peerId: string }>
}

export interface Hostile {
  readonly kind: Kind
  readonly payload: string | Buffer
}

type Build = (world: World, serial: number) => string | Buffer

const pick = <A>(items: ReadonlyArray<A>, i: number): A | undefined =>
  items.length === 0 ? undefined : items[Math.abs(i) % items.length]

/** Valid peer messages from the wire schemas, sampled once: the bases that get broken. */
const validPool: ReadonlyArray<Protocol.PeerMessage> = Effect.runSync(
  Arbitrary.sampleEffect(Arbitrary.schema(Protocol.PeerMessage), { count: 2_000, seed: 7 }),
)
const poolIndex = fc.nat({ max: validPool.length - 1 })
const base = (i: number): Record<string, unknown> => ({ ...validPool[i]! })

const notAToken = fc.oneof(
  fc.string({ minLength: 1, maxLength: 40 }),
  fc.stringMatching(/^[A-Za-z0-9_-]{43}$/),
  fc.constant("x"),
)
const wrongValue = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.jsonValue(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 4 }), fc.jsonValue(), { maxKeys: 3 }),
  fc.constant(""),
)
const FIELDS = [
  "peer_id",
  "token",
  "server_ip",
  "os",
  "hostname",
  "agent_version",
  "ticket",
  "result",
  "exit_code",
  "status",
  "started_at",
  "finished_at",
  "truncated",
  "running",
  "reason",
] as const

const overLimits: ReadonlyArray<readonly [string, () => unknown]> = [
  ["peer_id", () => "p".repeat(Protocol.MAX_ID_LENGTH + 1)],
  ["ticket", () => "9".repeat(Protocol.MAX_ID_LENGTH + 1)],
  ["token", () => "t".repeat(Protocol.MAX_TOKEN_LENGTH + 1)],
  ["server_ip", () => "1".repeat(Protocol.MAX_LABEL_LENGTH + 1)],
  ["hostname", () => "😀".repeat(Protocol.MAX_LABEL_LENGTH + 1)],
  ["reason", () => "r".repeat(Protocol.MAX_REASON_LENGTH + 1)],
  ["exit_code", () => Protocol.MAX_EXIT_CODE + 1],
  ["exit_code", () => Protocol.MIN_EXIT_CODE - 1],
  ["started_at", () => Protocol.MAX_EPOCH_MILLIS + 1],
  ["finished_at", () => -1],
  ["running", () => -1],
  ["exit_code", () => 1.5],
]
const hugeResult = "x".repeat(Protocol.MAX_RESULT_BYTES + 1)

const arbitraries: ReadonlyArray<{
  readonly kind: Kind
  readonly weight: number
  readonly arbitrary: fc.Arbitrary<[Kind, Build]>
}> = [
  {
    kind: "malformed_json",
    weight: 1_200,
    arbitrary: fc
      .tuple(poolIndex, fc.nat(), fc.string({ maxLength: 8 }), fc.string({ unit: "binary", maxLength: 64 }))
      .map(([i, cut, junk, text]): [Kind, Build] => [
        "malformed_json",
        () => {
          const json = JSON.stringify(validPool[i])
          switch (cut % 4) {
            case 0:
              return json.slice(0, cut % json.length)
            case 1:
              return `${json}${junk}}`
            case 2:
              return json.replace(/"/g, "'")
            default:
              return text.length > 0 ? text : "{"
          }
        },
      ]),
  },
  {
    kind: "not_an_object",
    weight: 600,
    arbitrary: fc
      .oneof(
        fc.array(fc.jsonValue(), { maxLength: 4 }),
        fc.string(),
        fc.double({ noNaN: true }),
        fc.boolean(),
        fc.constant(null),
      )
      .map((value): [Kind, Build] => ["not_an_object", () => JSON.stringify(value) ?? "null"]),
  },
  {
    kind: "unknown_msg",
    weight: 900,
    arbitrary: fc
      .tuple(poolIndex, fc.oneof(fc.string({ maxLength: 80 }), wrongValue, fc.constant(undefined)))
      .map(([i, msg]): [Kind, Build] => [
        "unknown_msg",
        () => {
          const m = base(i)
          if (msg === undefined) delete m.msg
          else m.msg = PEER_KINDS.has(msg as string) ? `${String(msg)}!` : msg
          return JSON.stringify(m)
        },
      ]),
  },
  {
    kind: "wrong_type",
    weight: 1_500,
    arbitrary: fc
      .tuple(poolIndex, fc.constantFrom(...FIELDS), wrongValue, fc.boolean())
      .map(([i, field, value, dropIt]): [Kind, Build] => [
        "wrong_type",
        (world) => {
          const m = base(i)
          // The good peers' ids make these look like theirs.
          if (typeof m.peer_id === "string") m.peer_id = pick(world.peerIds, i) ?? m.peer_id
          if (dropIt) delete m[field]
          else m[field] = value
          return JSON.stringify(m)
        },
      ]),
  },
  {
    kind: "over_limit",
    weight: 1_000,
    arbitrary: fc
      .tuple(poolIndex, fc.nat({ max: overLimits.length }), fc.nat())
      .map(([i, which, n]): [Kind, Build] => [
        "over_limit",
        (world) => {
          const m = base(i)
          if (typeof m.peer_id === "string") m.peer_id = pick(world.peerIds, n) ?? m.peer_id
          const limit = overLimits[which]
          // One in about a hundred carries a result text over its 256 KiB: big, but under 1 MiB.
          if (limit === undefined) {
            if (n % 100 !== 0) return JSON.stringify({ ...m, running: -n - 1 })
            return JSON.stringify({ ...m, msg: "result", ticket: "1", result: hugeResult })
          }
          m[limit[0]] = limit[1]()
          return JSON.stringify(m)
        },
      ]),
  },
  {
    kind: "nul_byte",
    weight: 600,
    arbitrary: fc
      .tuple(
        poolIndex,
        fc.constantFrom("peer_id", "token", "ticket", "result", "hostname", "reason"),
        fc.nat(),
      )
      .map(([i, field, at]): [Kind, Build] => [
        "nul_byte",
        (world) => {
          const m = base(i)
          const current = typeof m[field] === "string" ? (m[field] as string) : "abc"
          const value = field === "peer_id" ? (pick(world.peerIds, at) ?? current) : current
          const cut = at % (value.length + 1)
          m[field] = `${value.slice(0, cut)}\u0000${value.slice(cut)}`
          return JSON.stringify(m)
        },
      ]),
  },
  {
    kind: "invalid_utf8",
    weight: 300,
    arbitrary: fc
      .tuple(
        poolIndex,
        fc.constantFrom(Buffer.from([0xff]), Buffer.from([0xc0, 0x80]), Buffer.from([0xed, 0xa0, 0x80])),
      )
      .map(([i, bad]): [Kind, Build] => [
        "invalid_utf8",
        () => {
          const json = Buffer.from(JSON.stringify(validPool[i]))
          const at = Math.floor(json.length / 2)
          return Buffer.concat([json.subarray(0, at), bad, json.subarray(at)])
        },
      ]),
  },
  {
    kind: "forged_token",
    weight: 2_000,
    arbitrary: fc
      .tuple(fc.constantFrom("result", "heartbeat", "logout"), fc.nat(), notAToken, fc.boolean(), poolIndex)
      .map(([msg, n, token, otherPeers, i]): [Kind, Build] => [
        "forged_token",
        (world) => {
          const peerId = pick(world.peerIds, n) ?? "nobody"
          // Another good peer's real session token, or a made-up one.
          const other = pick(world.peerIds, n + 1)
          const stolen = other !== undefined && other !== peerId ? world.sessions.get(other) : undefined
          const forged = otherPeers && stolen !== undefined ? stolen : token
          const ticket = pick(world.tickets, n)?.ticket ?? String(n)
          const shaped = base(i)
          if (msg === "result")
            return JSON.stringify({
              msg,
              ticket,
              peer_id: peerId,
              token: forged,
              result: "forged",
              exit_code: 0,
              status: "succeeded",
            })
          if (msg === "heartbeat") return JSON.stringify({ msg, peer_id: peerId, token: forged, running: 0 })
          return JSON.stringify({
            msg,
            peer_id: peerId,
            token: forged,
            ...(typeof shaped.reason === "string" ? { reason: shaped.reason } : {}),
          })
        },
      ]),
  },
  {
    kind: "cross_peer_ticket",
    weight: 400,
    arbitrary: fc.nat().map((n): [Kind, Build] => [
      "cross_peer_ticket",
      (world) => {
        // A good peer's own session, answering a ticket that is another peer's.
        const ticket = pick(world.tickets, n)
        const peerId = world.peerIds.find((p) => p !== ticket?.peerId && world.sessions.has(p))
        if (ticket === undefined || peerId === undefined) return "{}"
        return JSON.stringify({
          msg: "result",
          ticket: ticket.ticket,
          peer_id: peerId,
          token: world.sessions.get(peerId),
          result: "forged",
          status: "succeeded",
        })
      },
    ]),
  },
  {
    kind: "replay",
    weight: 1_000,
    arbitrary: fc.nat().map((n): [Kind, Build] => ["replay", (world) => pick(world.sent, n) ?? "{}"]),
  },
  {
    kind: "bad_enrollment",
    weight: 800,
    arbitrary: fc
      .tuple(
        fc.oneof(fc.string({ minLength: 1, maxLength: 60 }), fc.constant("")),
        notAToken,
        fc.nat(),
        poolIndex,
      )
      .map(([id, token, n, i]): [Kind, Build] => [
        "bad_enrollment",
        (world) => {
          const m = base(i)
          // Half impersonate a good peer, half are strangers.
          const peerId = n % 2 === 0 ? (pick(world.peerIds, n) ?? id) : id || "x"
          return JSON.stringify({
            ...m,
            msg: "register",
            peer_id: peerId,
            token: token === world.token ? `${token}!` : token,
            server_ip: "10.0.0.1",
          })
        },
      ]),
  },
  {
    kind: "valid_register",
    weight: 10,
    arbitrary: fc.boolean().map((heartbeats): [Kind, Build] => [
      "valid_register",
      (world, serial) =>
        JSON.stringify({
          msg: "register",
          peer_id: `fuzz-${serial}`,
          token: world.token,
          server_ip: "10.0.0.2",
          ...(heartbeats ? { agent_version: "fuzz" } : {}),
        }),
    ]),
  },
  {
    kind: "replayed_register",
    weight: 2,
    arbitrary: fc
      .nat()
      .map((n): [Kind, Build] => ["replayed_register", (world) => pick(world.registers, n) ?? "{}"]),
  },
]

const PEER_KINDS = new Set<string>(Protocol.PEER_MSG_KINDS)

const mix = (only?: ReadonlySet<Kind>): fc.Arbitrary<[Kind, Build]> => {
  const chosen = arbitraries.filter((a) => only === undefined || only.has(a.kind))
  if (chosen.length === 0) throw new Error(`no generated kind among ${[...(only ?? [])].join(", ")}`)
  return fc.oneof(...chosen.map((a) => ({ weight: a.weight, arbitrary: a.arbitrary })))
}
const mixes = new Map<string, fc.Arbitrary<[Kind, Build]>>()
const mixOf = (only?: ReadonlySet<Kind>) => {
  const key = only === undefined ? "" : [...only].sort().join(",")
  let arbitrary = mixes.get(key)
  if (arbitrary === undefined) {
    arbitrary = mix(only)
    mixes.set(key, arbitrary)
  }
  return arbitrary
}

/** Over MAX_MESSAGE_BYTES: a valid-looking result whose text alone passes the whole-message limit. */
export const oversized = (world: World, serial: number): Hostile => ({
  kind: "oversized",
  payload: JSON.stringify({
    msg: "result",
    ticket: pick(world.tickets, serial)?.ticket ?? "1",
    peer_id: pick(world.peerIds, serial) ?? "nobody",
    token: pick([...world.sessions.values()], serial) ?? "x",
    result: "y".repeat(Protocol.MAX_MESSAGE_BYTES + (serial % 7)),
  }),
})

/** `count` hostile entries, deterministic for a seed (apart from what the world holds). */
export const generate = (
  world: World,
  count: number,
  seed: number,
  firstSerial: number,
  only?: ReadonlySet<Kind>,
): Array<Hostile> =>
  fc.sample(mixOf(only), { numRuns: count, seed }).map(([kind, build], i) => ({
    kind,
    payload: build(world, firstSerial + i),
  }))
