import { Protocol, Trust } from "@picus/core"
import { Arbitrary, Effect } from "effect"
import fc from "fast-check"
import { MAX_REGISTER_SKEW_MS } from "server"

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
  "wrong_identity",
  "replayed_signed",
  "skewed_ts",
  "bad_mac",
  "garbage_sig",
  "oversized",
] as const
export type Kind = (typeof KINDS)[number]

/**
 * Kinds whose entries the server may accept: they open sessions. Kept a small fraction. (Every
 * entry of the signed kinds must be refused: they forge for peers bound to a key they do not hold.)
 */
export const VALID_KINDS: ReadonlySet<Kind> = new Set(["valid_register", "replayed_register"])

/** A peer enrolled with an identity key, in a sealed session: what the forgeries aim at. */
export interface SignedIdentity {
  readonly peerId: string
  readonly sessionId: string
  readonly sessionToken: string
  readonly identity: Trust.SigningKey
  /** Its signed registration, exactly as sent. */
  readonly registration: string
}

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
  /** The peers bound to an identity key (their ids, keys and sealed sessions). */
  readonly signed: ReadonlyArray<SignedIdentity>
  /** The clock registrations' `ts` are made from (the server's, on the same machine). */
  readonly now: () => number
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
    arbitrary: fc.tuple(fc.nat(), fc.boolean()).map(([n, sealed]): [Kind, Build] => [
      "cross_peer_ticket",
      (world) => {
        // A good peer's own session, answering a ticket that is another peer's; half of them a
        // signed peer's sealed session, its MAC valid.
        const ticket = pick(world.tickets, n)
        const signed = sealed ? world.signed.find((s) => s.peerId !== ticket?.peerId) : undefined
        if (ticket !== undefined && signed !== undefined)
          return Trust.macPayload(
            JSON.stringify({
              msg: "result",
              ticket: ticket.ticket,
              peer_id: signed.peerId,
              token: signed.sessionId,
              result: "forged",
              status: "succeeded",
            }),
            signed.sessionToken,
          )
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

/** The attacker's own identity keys (fixed seeds: the same run, the same entries). */
const attackerKeys: ReadonlyArray<Trust.SigningKey> = Array.from(
  { length: 8 },
  (_, i) => Trust.signingKeyOf(Buffer.alloc(32, i + 1).toString("base64url"))!,
)
const attacker = fc.nat({ max: attackerKeys.length - 1 })

/** A signed registration's `ts` outside the server's window: minutes to a year off, either way. */
const skew = fc
  .tuple(fc.boolean(), fc.integer({ min: 1, max: 365 * 24 * 60 }))
  .map(([late, minutes]) => (late ? -1 : 1) * (MAX_REGISTER_SKEW_MS + minutes * 60_000))

/** Base64url text of `bytes` random bytes: signature- or MAC-shaped, and wrong. */
const b64 = (min: number, max: number) =>
  fc.uint8Array({ minLength: min, maxLength: max }).map((b) => Buffer.from(b).toString("base64url"))

/** A registration in the signed dialect, made of its parts; `signer` signs it (none: unsigned). */
const registerText = (
  world: World,
  fields: {
    readonly peerId: string
    readonly ts: number
    readonly peerKey?: string
    readonly nonce?: string
  },
): string =>
  JSON.stringify({
    msg: "register",
    peer_id: fields.peerId,
    token: world.token,
    server_ip: "10.0.0.3",
    os: "linux",
    distro: "fuzz",
    ...(fields.nonce === undefined ? {} : { nonce: fields.nonce }),
    ts: Math.min(Math.max(0, Math.round(fields.ts)), Protocol.MAX_EPOCH_MILLIS),
    ...(fields.peerKey === undefined ? {} : { peer_key: fields.peerKey }),
  })

/** A few of a signed peer's tickets if it has any, else anyone's: forged answers aim at these. */
const ticketOf = (world: World, peerId: string, n: number): string => {
  // Its recent ones, looked for from the end (the list grows all run long).
  const own: string[] = []
  for (
    let i = world.tickets.length - 1;
    i >= 0 && i >= world.tickets.length - 2_000 && own.length < 64;
    i--
  ) {
    if (world.tickets[i]!.peerId === peerId) own.push(world.tickets[i]!.ticket)
  }
  return pick(own, n) ?? pick(world.tickets, n)?.ticket ?? String(n)
}

const signedArbitraries: ReadonlyArray<{
  readonly kind: Kind
  readonly weight: number
  readonly arbitrary: fc.Arbitrary<[Kind, Build]>
}> = [
  {
    // A registration for a peer id bound to an identity key, by someone without that key (but with
    // a valid enrollment token): signed by another key, naming the bound key but mis-signed,
    // unsigned, or naming the bound key and unsigned.
    kind: "wrong_identity",
    weight: 300,
    arbitrary: fc
      .tuple(fc.nat(), fc.nat({ max: 3 }), attacker, fc.boolean())
      .map(([n, how, k, withNonce]): [Kind, Build] => [
        "wrong_identity",
        (world, serial) => {
          const target = pick(world.signed, n)
          if (target === undefined) return "{}"
          const key = attackerKeys[k]!
          const nonce = withNonce ? `fuzz-wi-${serial}` : undefined
          const at = { peerId: target.peerId, ts: world.now(), ...(nonce === undefined ? {} : { nonce }) }
          switch (how) {
            case 0:
              return Trust.signPayload(registerText(world, { ...at, peerKey: key.publicKey }), key)
            case 1:
              return Trust.signPayload(
                registerText(world, { ...at, peerKey: target.identity.publicKey }),
                key,
              )
            case 2:
              return registerText(world, at)
            default:
              return registerText(world, { ...at, peerKey: target.identity.publicKey })
          }
        },
      ]),
  },
  {
    // A signed peer's own registration, sent again byte for byte.
    kind: "replayed_signed",
    weight: 150,
    arbitrary: fc
      .nat()
      .map((n): [Kind, Build] => ["replayed_signed", (world) => pick(world.signed, n)?.registration ?? "{}"]),
  },
  {
    // Validly signed, but its ts far from the server's clock: by a bound peer's own key (a clock
    // gone wrong, or a registration kept for later) or by a key of a new id.
    kind: "skewed_ts",
    weight: 150,
    arbitrary: fc
      .tuple(fc.nat(), fc.boolean(), skew, attacker)
      .map(([n, bound, offset, k]): [Kind, Build] => [
        "skewed_ts",
        (world, serial) => {
          const target = bound ? pick(world.signed, n) : undefined
          const key = target?.identity ?? attackerKeys[k]!
          const peerId = target?.peerId ?? `fuzz-skew-${serial}`
          return Trust.signPayload(
            registerText(world, {
              peerId,
              ts: world.now() + offset,
              peerKey: key.publicKey,
              nonce: `fuzz-ts-${serial}`,
            }),
            key,
          )
        },
      ]),
  },
  {
    // A message of a signed peer's sealed session (its real session id as token) whose MAC is
    // missing, made with a wrong key (anything, the session id itself, another session's token),
    // valid for other text, or garbage.
    kind: "bad_mac",
    weight: 600,
    arbitrary: fc
      .tuple(
        fc.constantFrom("result", "heartbeat", "logout"),
        fc.nat(),
        fc.nat({ max: 5 }),
        fc.string({ minLength: 1, maxLength: 64 }),
        fc.oneof(b64(12, 96), fc.constant("!!"), fc.string({ maxLength: 20 })),
      )
      .map(([msg, n, how, wrongKey, garbage]): [Kind, Build] => [
        "bad_mac",
        (world) => {
          const target = pick(world.signed, n)
          if (target === undefined) return "{}"
          const make = (variant: string) =>
            JSON.stringify(
              msg === "result"
                ? {
                    msg,
                    ticket: ticketOf(world, target.peerId, n),
                    peer_id: target.peerId,
                    token: target.sessionId,
                    result: `forged${variant}`,
                    exit_code: 0,
                    status: "succeeded",
                  }
                : msg === "heartbeat"
                  ? { msg, peer_id: target.peerId, token: target.sessionId, running: variant.length }
                  : { msg, peer_id: target.peerId, token: target.sessionId, reason: `forged${variant}` },
            )
          const payload = make("")
          switch (how) {
            case 0:
              return payload
            case 1:
              return Trust.macPayload(payload, wrongKey)
            case 2:
              return Trust.macPayload(payload, target.sessionId)
            case 3: {
              const other = world.signed.find((s) => s.peerId !== target.peerId)
              return Trust.macPayload(payload, other?.sessionToken ?? wrongKey)
            }
            case 4: {
              // The right MAC, of other text: the payload changed after it was made.
              const mac = Protocol.splitTrailer(Trust.macPayload(make("!"), target.sessionToken), "mac")!
              return Protocol.appendTrailer(payload, "mac", mac.value)
            }
            default:
              return `${payload.slice(0, -1)},"mac":${JSON.stringify(garbage)}}`
          }
        },
      ]),
  },
  {
    // A `sig` trailer that is garbage: the right length and wrong, the wrong length, another
    // payload's valid signature, text that is not base64url, or two of them; on registrations naming
    // a key (a bound peer's or a new id's), and now and then on other messages.
    kind: "garbage_sig",
    weight: 300,
    arbitrary: fc
      .tuple(fc.nat(), fc.nat({ max: 5 }), fc.boolean(), b64(64, 64), b64(1, 120), attacker, notAToken)
      .map(([n, how, bound, sig64, sigAny, k, token]): [Kind, Build] => [
        "garbage_sig",
        (world, serial) => {
          const target = bound ? pick(world.signed, n) : undefined
          const key = target?.identity ?? attackerKeys[k]!
          const peerId = target?.peerId ?? `fuzz-sig-${serial}`
          const payload =
            n % 8 === 0
              ? JSON.stringify({
                  msg: "heartbeat",
                  peer_id: pick(world.peerIds, n) ?? peerId,
                  token,
                  running: 0,
                })
              : registerText(world, {
                  peerId,
                  ts: world.now(),
                  peerKey: key.publicKey,
                  ...(n % 2 === 0 ? { nonce: `fuzz-sig-${serial}` } : {}),
                })
          switch (how) {
            case 0:
              return Protocol.appendTrailer(payload, "sig", sig64)
            case 1:
              return Protocol.appendTrailer(payload, "sig", sigAny)
            case 2: {
              const other = Trust.signPayload(`${payload.slice(0, -1)},"x":1}`, key)
              return Protocol.appendTrailer(payload, "sig", Protocol.splitTrailer(other, "sig")!.value)
            }
            case 3:
              return `${payload.slice(0, -1)},"sig":"not base64url!"}`
            case 4:
              return Protocol.appendTrailer(Protocol.appendTrailer(payload, "sig", sig64), "sig", sigAny)
            default:
              return `${payload.slice(0, -1)},"sig":${JSON.stringify(token)}}`
          }
        },
      ]),
  },
]

const PEER_KINDS = new Set<string>(Protocol.PEER_MSG_KINDS)

const mix = (only?: ReadonlySet<Kind>): fc.Arbitrary<[Kind, Build]> => {
  const chosen = [...arbitraries, ...signedArbitraries].filter((a) => only === undefined || only.has(a.kind))
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

/**
 * A registration signed by a signed peer's own key, as if the key had leaked: it is valid, and
 * replaces that peer's session. Not part of the mix: a test plants it to see the ledger fail.
 */
export const leakedKeyRegistration = (world: World): string => {
  const target = world.signed[0]
  if (target === undefined) return "{}"
  return Trust.signPayload(
    JSON.stringify({
      msg: "register",
      peer_id: target.peerId,
      token: world.token,
      server_ip: "10.0.0.4",
      nonce: `leaked-${world.now()}`,
      ts: world.now(),
      peer_key: target.identity.publicKey,
      box_key: Trust.newBoxKeyPair().publicKey,
    }),
    target.identity,
  )
}

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
