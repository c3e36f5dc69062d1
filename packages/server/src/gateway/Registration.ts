import { randomUUID } from "node:crypto"
import {
  type Admission,
  type Delivery,
  Metrics,
  Protocol,
  Store,
  sessionTokenOf,
  Transport,
  Trust,
} from "@picus/core"
import { Clock, Effect, Metric } from "effect"
import { PeerAccess } from "../access/PeerAccess.ts"
import { checkEnrollmentToken } from "../tokens.ts"
import type { GatewayConfig } from "./config.ts"
import { makeRateLimitedLog } from "./RateLimitedLog.ts"
import { DEFAULT_REJECTION_RATE, makeRejectionLog } from "./RejectionLog.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"

/** What the gateway is doing: serving, or shutting down (no new sessions). */
export interface Lifecycle {
  accepting: boolean
}

/** A signed registration's `ts` may be this far from the server's clock, either way. */
export const MAX_REGISTER_SKEW_MS = 5 * 60_000

/** Registrations of one peer id are admitted at least this far apart, unless configured otherwise. */
export const DEFAULT_REGISTER_INTERVAL_MS = 2_000

const admissionReason: Record<Exclude<Admission, "admitted">, string> = {
  wrong_identity: Protocol.RejectReason.wrongIdentity,
  replayed: Protocol.RejectReason.replayed,
  too_many: Protocol.RejectReason.tooMany,
}

/**
 * Registrations: a stale one is dropped, a copy sent again while the first was queued is already
 * answered; then, in order of cost, each check may refuse it (told to the peer; logged, within
 * bounds):
 * - a registration naming a `peer_key` must be signed by it, over its exact payload, and carry a
 *   `ts` within MAX_REGISTER_SKEW_MS of the server's clock (`wrongIdentity`, `replayed`);
 * - its token must be an active enrollment token, and one bound to a peer id is valid for that id
 *   only (`unknownToken`, `wrongPeer`);
 * - the Store admits it (atomically, across instances): a peer id bound to an identity key takes
 *   registrations signed by that key only, a signed one must be newer than the last admitted, and
 *   one peer id is admitted at most once per `registerIntervalMs` (`wrongIdentity`, `replayed`,
 *   `tooMany`). The first signed registration admitted for a peer id binds it to its key.
 * A good one opens a session; with a `box_key`, a sealed one. A registration with a nonce is
 * answered in its reply stream, one without (a seed peer's) in the peer's inbox.
 */
export const makeRegistration = Effect.fnUntraced(function* (
  config: GatewayConfig,
  sessionKey: Uint8Array,
  registry: SessionRegistry,
  lifecycle: Lifecycle,
) {
  const store = yield* Store
  const transport = yield* Transport
  const access = yield* PeerAccess
  const weak = config.weakened ?? {}
  const minIntervalMs = config.registerIntervalMs ?? DEFAULT_REGISTER_INTERVAL_MS
  const badInput = makeRateLimitedLog()
  const rejections = makeRejectionLog(config.rejectionRate ?? DEFAULT_REJECTION_RATE, (row) =>
    store.logRejected({ ...row, serverId: config.serverId }),
  )

  /** A rejection: to the registration's reply stream when it has a nonce, else to the peer's inbox. */
  const sendRejection = (peerId: string, reason: string, nonce?: string) => {
    const payload = Protocol.encodeMessage({
      msg: "register",
      peer_id: peerId,
      token: Protocol.REJECTED_TOKEN,
      status: "rejected",
      reason,
      ...(nonce === undefined ? {} : { nonce }),
    })
    return nonce === undefined
      ? transport.sendToPeer(peerId, payload, { lifetime: "notice" })
      : transport.sendReply(nonce, payload)
  }

  /** Told to the peer, counted in the registration log (see RejectionLog), logged rate-limited. */
  const reject = Effect.fnUntraced(function* (message: Protocol.Register, reason: string, why?: string) {
    yield* Metric.update(
      Metric.withAttributes(Metrics.registrationsTotal, { outcome: "rejected", reason }),
      1,
    )
    yield* rejections.record({ peerId: message.peer_id, reason, serverIp: message.server_ip })
    yield* sendRejection(message.peer_id, reason, message.nonce)
    const at = yield* Clock.currentTimeMillis
    yield* transport.publish(() =>
      Protocol.encodeFeedEvent({
        event: "rejected",
        at,
        server_id: config.serverId,
        peer_id: message.peer_id,
        reason,
      }),
    )
    yield* badInput(
      `rejected:${reason}`,
      `registration rejected: ${why === undefined ? reason : `${reason} (${why})`} (peer ${message.peer_id})`,
    )
  })

  const register = Effect.fnUntraced(function* (message: Protocol.Register, entry: Delivery) {
    const sentAt = Number(entry.id.split("-")[0])
    const now = yield* Clock.currentTimeMillis
    const age = now - sentAt
    if (age > config.staleRegisterMs) {
      yield* Effect.logWarning(`dropped a registration ${Math.round(age / 1000)}s old`).pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    // A copy the peer sent again while its first was still queued (a busy uplink): the session the
    // first one opened is newer than this copy, and its acceptance is already on its way.
    const current = registry.get(message.peer_id)
    if (current && current.openedAt > sentAt) {
      yield* Effect.logInfo("a registration sent again before its session opened: already answered").pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    if (!lifecycle.accepting) return yield* reject(message, Protocol.RejectReason.shuttingDown)

    // Signed by the key it names, over the exact bytes that came in (no canonical form to agree on).
    const identityKey = weak.identity === true ? undefined : message.peer_key
    if (identityKey !== undefined) {
      const signature = Trust.checkSignature(entry.payload, identityKey)
      if (signature !== "valid") {
        return yield* reject(
          message,
          Protocol.RejectReason.wrongIdentity,
          `${signature === "unsigned" ? "not signed" : "not validly signed"} by the peer_key it names`,
        )
      }
      if (weak.replay !== true) {
        if (message.ts === undefined || Math.abs(message.ts - now) >= MAX_REGISTER_SKEW_MS) {
          return yield* reject(
            message,
            Protocol.RejectReason.replayed,
            message.ts === undefined
              ? "signed, but without a ts"
              : `its ts is ${Math.round((message.ts - now) / 1000)}s off the server's clock`,
          )
        }
      }
    }

    const verdict = yield* checkEnrollmentToken(config.enrollment, message.token, message.peer_id).pipe(
      Effect.provideService(Store, store),
    )
    const bindingIgnored =
      weak.peerBinding === true && !verdict.accepted && verdict.reason === Protocol.RejectReason.wrongPeer
    if (!verdict.accepted && !bindingIgnored) return yield* reject(message, verdict.reason)

    if (weak.identity !== true) {
      const admission = yield* store.admitRegistration({
        peerId: message.peer_id,
        identityKey: identityKey ?? null,
        ts: identityKey !== undefined && weak.replay !== true ? (message.ts ?? null) : null,
        now,
        minIntervalMs,
      })
      if (admission !== "admitted") return yield* reject(message, admissionReason[admission])
    }

    const sessionId = randomUUID()
    let sealed: string | undefined
    if (message.box_key !== undefined) {
      const credentials = yield* access.grant(message.peer_id, sessionId)
      sealed = Trust.seal(
        message.box_key,
        JSON.stringify({
          token: sessionTokenOf(sessionKey, sessionId),
          ...(credentials ? { redis_user: credentials.user, redis_password: credentials.password } : {}),
        }),
      )
      if (sealed === undefined) {
        yield* access.release(message.peer_id, sessionId)
        return yield* reject(message, "box_key is not a usable X25519 public key")
      }
    }
    yield* registry.start({
      peerId: message.peer_id,
      sessionId,
      serverIp: message.server_ip,
      os: message.os ?? null,
      distro: message.distro ?? null,
      hostname: message.hostname ?? null,
      agentVersion: message.agent_version ?? null,
      labels: message.labels ?? null,
      nonce: message.nonce ?? null,
      tokenId: verdict.accepted ? verdict.tokenId : null,
      ...(sealed === undefined ? {} : { sealed }),
    })
    yield* Metric.update(
      Metric.withAttributes(Metrics.registrationsTotal, { outcome: "accepted", reason: "" }),
      1,
    )
  })

  return {
    register,
    sendRejection,
    /** Writes the refusals counted beyond the rate (see RejectionLog); run every few seconds. */
    flushRejections: rejections.flush,
  }
})

export type Registration = Effect.Success<ReturnType<typeof makeRegistration>>
