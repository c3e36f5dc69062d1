import { randomUUID } from "node:crypto"
import { assert } from "@effect/vitest"
import { type Envelope, Protocol, Transport, Trust } from "@picus/core"
import { eventually } from "@picus/core/testing"
import { Clock, Effect, Result, type Scope } from "effect"

/**
 * A hand-driven peer of the trust protocol: it signs its registrations with an identity key of its
 * own, can ask for a sealed session, reads the answer in the registration's reply stream, and MACs
 * what it sends in a sealed session. Every part of a registration can be set by hand, to send what
 * a real peer never would.
 */

export interface RegisterOptions {
  readonly peerId: string
  readonly token?: string
  /** The key that signs the registration; undefined: an unsigned (seed-style) registration. */
  readonly identity?: Trust.SigningKey
  /** The `peer_key` named (default: the identity's public key). */
  readonly peerKey?: string
  /** Default: the clock's now. */
  readonly ts?: number
  /** A box key asks for a sealed session. */
  readonly box?: Trust.BoxKeyPair
  /** Default: a fresh one; null: none (the answer then goes to the inbox). */
  readonly nonce?: string | null
  /** Changes the signed payload after signing (a forgery). */
  readonly tamper?: (payload: string) => string
  /** Registers as a seed peer would (no agent_version: it never heartbeats). */
  readonly seed?: boolean
}

/** The last `ts` given: as a real peer's, each registration's is greater than the one before. */
let lastTs = 0

/** A registration's payload as the peer would send it. */
export const registerPayload = (options: RegisterOptions) =>
  Effect.gen(function* () {
    // Two registrations within a millisecond (the memory transport is that fast) must not share one.
    const ts = options.ts ?? Math.max(yield* Clock.currentTimeMillis, lastTs + 1)
    if (options.ts === undefined) lastTs = ts
    const nonce = options.nonce === undefined ? randomUUID() : options.nonce
    const identity = options.identity
    const body = Protocol.encodeMessage({
      msg: "register",
      peer_id: options.peerId,
      token: options.token ?? "good-token",
      server_ip: "10.1.2.3",
      os: "linux",
      distro: "debian",
      ...(options.seed === true ? {} : { agent_version: "trust-test" }),
      ...(nonce === null ? {} : { nonce }),
      ...(identity ? { ts, peer_key: options.peerKey ?? identity.publicKey } : {}),
      ...(options.box ? { box_key: options.box.publicKey } : {}),
    })
    const signed = identity ? Trust.signPayload(body, identity) : body
    return { payload: options.tamper ? options.tamper(signed) : signed, nonce }
  })

export const newIdentity = (): Trust.SigningKey => Trust.signingKeyOf(Trust.newPrivateKey())!

/** Reads one stream (a reply stream or an inbox) from its start, one entry at a time. */
const streamOf = (
  reader: {
    readonly read: (
      after: string,
      o: { count: number; blockMs: number },
    ) => Effect.Effect<ReadonlyArray<Envelope>, unknown>
  },
  after = "0-0",
) => {
  let cursor = after
  return Effect.gen(function* () {
    const [entry] = yield* eventually(
      reader
        .read(cursor, { count: 1, blockMs: 200 })
        .pipe(Effect.map((es) => (es.length > 0 ? es : undefined))),
      "a message from the server",
      { timeoutMs: 10_000 },
    )
    cursor = (entry as Envelope).id
    return (entry as Envelope).payload
  })
}

/** Decodes a server message, which the test expects to be one. */
export const decodeServer = (payload: string): Protocol.ServerMessage => {
  const decoded = Protocol.decodeServerMessage(payload)
  assert.isTrue(Result.isSuccess(decoded), `a server message: ${payload}`)
  return (decoded as Result.Success<Protocol.ServerMessage, never>).success
}

export interface Answer {
  readonly raw: string
  readonly message: Protocol.ServerMessage
  /** The registration as it was sent. */
  readonly payload: string
  /** Sends the very same registration again (a replay) and returns the next answer on its stream. */
  readonly again: Effect.Effect<Answer, unknown>
}

/** Sends a registration and returns the answer from its reply stream (or the inbox, without a nonce). */
export const registerOnce = (
  options: RegisterOptions,
): Effect.Effect<Answer, unknown, Transport | Scope.Scope> =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const { payload, nonce } = yield* registerPayload(options)
    const reader =
      nonce === null ? yield* transport.inboxReader(options.peerId) : yield* transport.replyReader(nonce)
    const read = streamOf(reader, nonce === null ? yield* transport.inboxTail(options.peerId) : "0-0")
    // An inbox also holds what earlier sessions were sent: the answer is the next registration reply.
    const next: Effect.Effect<string, unknown> = read.pipe(
      Effect.flatMap((raw) =>
        Protocol.serverMessageKind(decodeServer(raw)).startsWith("register_") ? Effect.succeed(raw) : next,
      ),
    )
    const send: Effect.Effect<Answer, unknown> = Effect.gen(function* () {
      yield* transport.sendUplink(payload)
      const raw = yield* next
      return { raw, message: decodeServer(raw), payload, again: send }
    })
    return yield* send
  })

export const rejectionOf = (answer: Answer): string | undefined =>
  Protocol.isRegisterRejected(answer.message) ? (answer.message.reason ?? "") : undefined

/**
 * A peer of a sealed session: it registers with a box key, unseals its token, reads its inbox, and
 * sends results with the session id and a MAC (or without, or with a bad one, to test the server).
 */
export const sealedPeer = (
  peerId: string,
  options: { readonly identity?: Trust.SigningKey; readonly seed?: boolean } = {},
): Effect.Effect<
  {
    readonly sessionId: string
    readonly sessionToken: string
    readonly accepted: Protocol.RegisterAccepted
    readonly acceptedRaw: string
    readonly next: Effect.Effect<Protocol.ServerMessage, unknown>
    readonly nextRaw: Effect.Effect<string, unknown>
    readonly result: (
      ticket: string,
      how?: { readonly mac?: "valid" | "none" | "wrong-token" | "tampered"; readonly token?: string },
    ) => Effect.Effect<string, unknown>
  },
  unknown,
  Transport | Scope.Scope
> =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const identity = options.identity ?? newIdentity()
    const box = Trust.newBoxKeyPair()
    const inbox = yield* transport.inboxReader(peerId)
    const nextRaw = streamOf(inbox, yield* transport.inboxTail(peerId))
    const answer = yield* registerOnce({ peerId, identity, box, seed: options.seed ?? false })
    assert.strictEqual(Protocol.serverMessageKind(answer.message), "register_accepted", answer.raw)
    const accepted = answer.message as Protocol.RegisterAccepted
    const opened = Trust.unseal(box, accepted.sealed ?? "")
    assert.isDefined(opened, "the acceptance is sealed to the box key")
    const sessionToken = (JSON.parse(opened!) as { token: string }).token
    const sessionId = accepted.token
    const result = (
      ticket: string,
      how: { readonly mac?: "valid" | "none" | "wrong-token" | "tampered"; readonly token?: string } = {},
    ) => {
      const body = Protocol.encodeMessage({
        msg: "result",
        ticket,
        peer_id: peerId,
        token: how.token ?? sessionId,
        result: `ran ${ticket}`,
        exit_code: 0,
      })
      const mac = how.mac ?? "valid"
      const payload =
        mac === "none"
          ? body
          : mac === "wrong-token"
            ? Trust.macPayload(body, `${sessionToken}x`)
            : mac === "tampered"
              ? Trust.macPayload(body, sessionToken).replace(`ran ${ticket}`, `forged ${ticket}`)
              : Trust.macPayload(body, sessionToken)
      return transport.sendUplink(payload)
    }
    return {
      sessionId,
      sessionToken,
      accepted,
      acceptedRaw: answer.raw,
      nextRaw,
      next: nextRaw.pipe(Effect.map(decodeServer)),
      result,
    }
  })

/** A Transport that keeps a copy of every payload written for a peer (inbox or reply stream). */
export const recording = (transport: Transport["Service"], sent: Array<string>): Transport["Service"] => ({
  ...transport,
  sendToPeer: (peerId, payload) =>
    Effect.sync(() => sent.push(payload)).pipe(Effect.andThen(transport.sendToPeer(peerId, payload))),
  sendManyToPeer: (peerId, payloads) =>
    Effect.sync(() => sent.push(...payloads)).pipe(
      Effect.andThen(transport.sendManyToPeer(peerId, payloads)),
    ),
  sendReply: (nonce, payload) =>
    Effect.sync(() => sent.push(payload)).pipe(Effect.andThen(transport.sendReply(nonce, payload))),
})
