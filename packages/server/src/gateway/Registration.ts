import { randomUUID } from "node:crypto"
import { type Delivery, Protocol, Store, Transport } from "@picus/core"
import { Clock, Effect, Option } from "effect"
import { verifyEnrollmentToken } from "../tokens.ts"
import type { GatewayConfig } from "./config.ts"
import { makeRateLimitedLog } from "./RateLimitedLog.ts"
import { DEFAULT_REJECTION_RATE, makeRejectionLog } from "./RejectionLog.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"

/** What the gateway is doing: serving, or shutting down (no new sessions). */
export interface Lifecycle {
  accepting: boolean
}

/**
 * Registrations: a stale one is dropped, a copy sent again while the first was queued is already
 * answered, a bad token is rejected (logged, and told to the peer), a good one opens a session.
 */
export const makeRegistration = Effect.fnUntraced(function* (
  config: GatewayConfig,
  registry: SessionRegistry,
  lifecycle: Lifecycle,
) {
  const store = yield* Store
  const transport = yield* Transport
  const badInput = makeRateLimitedLog()
  const rejections = makeRejectionLog(config.rejectionRate ?? DEFAULT_REJECTION_RATE, (row) =>
    store.logRejected({ ...row, serverId: config.serverId }),
  )

  const sendRejection = (peerId: string, reason: string, nonce?: string) =>
    transport.sendToPeer(
      peerId,
      Protocol.encodeMessage({
        msg: "register",
        peer_id: peerId,
        token: Protocol.REJECTED_TOKEN,
        status: "rejected",
        reason,
        ...(nonce === undefined ? {} : { nonce }),
      }),
    )

  const reject = Effect.fnUntraced(function* (message: Protocol.Register, reason: string) {
    yield* rejections.record({ peerId: message.peer_id, reason, serverIp: message.server_ip })
    yield* sendRejection(message.peer_id, reason, message.nonce)
    yield* transport.publish(
      Protocol.encodeFeedEvent({
        event: "rejected",
        at: yield* Clock.currentTimeMillis,
        server_id: config.serverId,
        peer_id: message.peer_id,
        reason,
      }),
    )
    yield* badInput(`rejected:${reason}`, `registration rejected: ${reason} (peer ${message.peer_id})`)
  })

  const register = Effect.fnUntraced(function* (message: Protocol.Register, entry: Delivery) {
    const sentAt = Number(entry.id.split("-")[0])
    const age = (yield* Clock.currentTimeMillis) - sentAt
    if (age > config.staleRegisterMs) {
      yield* Effect.logWarning(`dropped a registration ${Math.round(age / 1000)}s old`).pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    // A copy the peer sent again while its first was still queued (a busy uplink): the session the
    // first one opened is newer than this copy, and its acceptance is already in the peer's inbox.
    const current = registry.get(message.peer_id)
    if (current && current.openedAt > sentAt) {
      yield* Effect.logInfo("a registration sent again before its session opened: already answered").pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    if (!lifecycle.accepting) return yield* reject(message, Protocol.RejectReason.shuttingDown)
    const verdict = yield* verifyEnrollmentToken(config.enrollment, message.token).pipe(
      Effect.provideService(Store, store),
    )
    if (Option.isSome(verdict)) return yield* reject(message, verdict.value)
    yield* registry.start({
      peerId: message.peer_id,
      sessionId: randomUUID(),
      serverIp: message.server_ip,
      os: message.os ?? null,
      distro: message.distro ?? null,
      hostname: message.hostname ?? null,
      agentVersion: message.agent_version ?? null,
      nonce: message.nonce ?? null,
    })
  })

  return {
    register,
    sendRejection,
    /** Writes the refusals counted beyond the rate (see RejectionLog); run every few seconds. */
    flushRejections: rejections.flush,
  }
})

export type Registration = Effect.Success<ReturnType<typeof makeRegistration>>
