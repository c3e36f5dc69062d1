import { assert } from "@effect/vitest"
import { Protocol, Transport, Trust } from "@picus/core"
import { Effect, Result } from "effect"

/**
 * A hand-driven server for the peer's tests, on the memory transport: it reads what the peer
 * sends and writes what the test tells it to, signed by a cluster key of its own (or by another
 * key, or not at all, when the test plays an attacker). It checks, as a server does, that every
 * registration is signed by its `peer_key` and every message of a session it opened carries a
 * valid MAC under that session's token.
 */

export type Signer = Trust.SigningKey | "unsigned"

export interface FromPeer {
  readonly raw: string
  readonly message: Protocol.PeerMessage
}

export interface OpenedSession {
  /** The session's public name: the acceptance's token, quoted by every message of the session. */
  readonly id: string
  /** The session token, sealed in the acceptance. */
  readonly secret: string
}

export const newClusterKey = (): Trust.SigningKey => Trust.signingKeyOf(Trust.newPrivateKey())!

export const signed = (message: Protocol.ServerMessage, signer: Signer): string => {
  const payload = Protocol.encodeMessage(message)
  return signer === "unsigned" ? payload : Trust.signPayload(payload, signer)
}

export const makeFakeServer = (
  options: { readonly peerId?: string; readonly cluster?: Trust.SigningKey } = {},
) =>
  Effect.gen(function* () {
    const transport = yield* Transport
    const peerId = options.peerId ?? "p1"
    const cluster = options.cluster ?? newClusterKey()
    const uplink = yield* transport.uplinkReader("test-server")
    const secrets = new Map<string, string>()
    /** Every message the peer sent of a session, with whether its MAC was valid. */
    const macs: Array<{ readonly msg: string; readonly check: Trust.MacCheck }> = []
    /** Every payload the peer sent, as it sent it. */
    const raws: Array<string> = []
    let sessions = 0

    const decode = (raw: string): FromPeer => {
      raws.push(raw)
      const decoded = Protocol.decodePeerMessage(raw)
      assert.isTrue(Result.isSuccess(decoded), `the peer sent a malformed message: ${raw.slice(0, 200)}`)
      const message = (decoded as Result.Success<Protocol.PeerMessage, never>).success
      if (message.msg === "register") {
        assert.isString(message.peer_key, "a registration carries the peer's identity key")
        assert.strictEqual(
          Trust.checkSignature(raw, message.peer_key!),
          "valid",
          "a registration is signed by its peer_key",
        )
      } else {
        const secret = secrets.get(message.token)
        if (secret !== undefined) macs.push({ msg: message.msg, check: Trust.checkMac(raw, secret) })
      }
      return { raw, message }
    }

    /** What the peer has sent, waiting up to 3 s for a first message. */
    const read = (blockMs = 3_000) =>
      uplink
        .read({ count: 100, blockMs })
        .pipe(Effect.map((entries) => entries.map((e) => decode(e.payload))))
    const fromPeer = read().pipe(Effect.map((all) => all.map((m) => m.message)))
    /** What the peer has sent so far, without waiting. */
    const sentSoFar = read(0).pipe(Effect.map((all) => all.map((m) => m.message)))

    /** Reads until a message of this kind arrives (those read before it are dropped). */
    const next = (kind: Protocol.PeerMessage["msg"]) =>
      Effect.gen(function* () {
        const deadline = Date.now() + 10_000
        while (Date.now() < deadline) {
          const found = (yield* read()).find((m) => m.message.msg === kind)
          if (found) return found
        }
        return assert.fail(`no ${kind} from the peer`)
      })
    const nextRegistration = next("register").pipe(
      Effect.map(({ raw, message }) => ({ raw, register: message as Protocol.Register })),
    )

    /** Reads until `count` results have arrived. */
    const results = (count: number) =>
      Effect.gen(function* () {
        const found: Array<Protocol.Result> = []
        const deadline = Date.now() + 10_000
        while (found.length < count && Date.now() < deadline) {
          for (const m of yield* fromPeer) if (m.msg === "result") found.push(m)
        }
        return found
      })

    const toPeer = (message: Protocol.ServerMessage, signer: Signer = cluster) =>
      transport.sendToPeer(peerId, signed(message, signer))
    const reply = (nonce: string, message: Protocol.ServerMessage, signer: Signer = cluster) =>
      transport.sendReply(nonce, signed(message, signer))

    /** The acceptance of this registration, as a server that seals sessions writes it. */
    const acceptance = (
      register: Protocol.Register,
      overrides: {
        readonly sessionId?: string
        readonly clusterKey?: string
        readonly endorsement?: string
        readonly sealed?: string
        readonly credentials?: { readonly redis_user: string; readonly redis_password: string }
        readonly nonce?: string
        readonly heartbeatMs?: number
      } = {},
    ) => {
      const id = overrides.sessionId ?? `s${++sessions}`
      const secret = `session_${Trust.newPrivateKey()}`
      const message: Protocol.RegisterAccepted = {
        msg: "register",
        peer_id: register.peer_id,
        token: id,
        status: "accepted",
        session_id: id,
        server_id: "test-server",
        heartbeat_ms: overrides.heartbeatMs ?? 60_000,
        nonce: overrides.nonce ?? register.nonce!,
        sealed:
          overrides.sealed ??
          Trust.seal(register.box_key!, JSON.stringify({ token: secret, ...overrides.credentials }))!,
        cluster_key: overrides.clusterKey ?? cluster.publicKey,
        ...(overrides.endorsement === undefined ? {} : { key_endorsement: overrides.endorsement }),
      }
      return { message, session: { id, secret } satisfies OpenedSession }
    }

    /** Accepts the registration (in its reply stream), signed by `signer`. */
    const accept = (
      register: Protocol.Register,
      overrides: Parameters<typeof acceptance>[1] & { readonly signer?: Signer } = {},
    ) =>
      Effect.gen(function* () {
        const { message, session } = acceptance(register, overrides)
        secrets.set(session.id, session.secret)
        yield* reply(register.nonce!, message, overrides.signer ?? cluster)
        return session
      })

    /** Waits for the registration and accepts it. */
    const acceptNext = Effect.gen(function* () {
      const { register } = yield* nextRegistration
      return yield* accept(register)
    })

    const job = (
      ticket: string,
      command: string,
      session: OpenedSession | string,
      distro = "debian",
    ): Protocol.Job => ({
      msg: "job",
      ticket,
      peer_id: peerId,
      token: typeof session === "string" ? session : session.id,
      job: { name: `job ${ticket}`, os: "linux", distro, command },
    })

    return {
      cluster,
      fromPeer,
      sentSoFar,
      next,
      nextRegistration,
      results,
      toPeer,
      reply,
      acceptance,
      accept,
      acceptNext,
      job,
      /** The MAC checks of the session messages the peer sent so far. */
      macs: () => [...macs],
      /** Every payload the peer sent so far (read by the server), as sent. */
      raws: () => [...raws],
    }
  })

/** The late answer to a heartbeat of a session the server no longer has. */
export const sessionExpired: Protocol.ServerMessage = {
  msg: "register",
  peer_id: "p1",
  token: Protocol.REJECTED_TOKEN,
  status: "rejected",
  reason: Protocol.RejectReason.sessionExpired,
}
