import {
  type Delivery,
  LeaseLost,
  type PeerSession,
  Protocol,
  type SessionBusy,
  Store,
  type StoreError,
  sessionAuthenticator,
  sessionTokenOf,
  Transport,
  type TransportError,
  Trust,
} from "@picus/core"
import { Clock, Effect, Exit, Option, Result } from "effect"
import type { AccessError } from "../access/PeerAccess.ts"
import type { GatewayConfig } from "./config.ts"
import { makeRateLimitedLog } from "./RateLimitedLog.ts"
import type { Registration } from "./Registration.ts"
import type { EntryOutcome, HeldResult, makeResultRecorder } from "./ResultRecorder.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"

type PeerMessage = Exclude<Protocol.PeerMessage, Protocol.Register>

/** An entry of a batch, decoded. */
type Item =
  | { readonly entry: Delivery; readonly notice: Protocol.ServerNotice }
  | { readonly entry: Delivery; readonly message: Protocol.PeerMessage }
  | { readonly entry: Delivery; readonly malformed: Protocol.ProtocolError }

/** A batch decoded: the peers it speaks for, and its handling (the outcome of each entry). */
export interface PreparedBatch {
  readonly peers: ReadonlySet<string>
  /** It has registrations or logouts: sessions open or close, so it runs beside no other batch. */
  readonly exclusive: boolean
  readonly run: Effect.Effect<ReadonlyMap<Delivery, EntryOutcome>>
}

/**
 * Where each uplink entry goes: a result or heartbeat of a session held here to that session; one of
 * a session held by another live instance is forwarded there (once, never onwards); one of a session
 * whose lease ran out is taken over here first; anything else is refused. Each peer's messages are
 * handled in order, different peers side by side.
 */
export const makeRouter = Effect.fnUntraced(function* (deps: {
  readonly config: GatewayConfig
  readonly sessionKey: Uint8Array
  readonly registry: SessionRegistry
  readonly registration: Registration
  readonly recorder: Effect.Success<ReturnType<typeof makeResultRecorder>>
  /** Whether sessions may be taken over now (not just after this instance was cut off). */
  readonly mayTakeOver: (now: number) => boolean
}) {
  const { config, sessionKey, registry, registration, recorder } = deps
  const store = yield* Store
  const transport = yield* Transport
  const badInput = makeRateLimitedLog()

  const handleHeld = (
    session: PeerSession,
    message: PeerMessage,
  ): Effect.Effect<void, StoreError | LeaseLost | SessionBusy> => {
    switch (message.msg) {
      case "result":
        return session.result(message).pipe(Effect.asVoid)
      case "heartbeat":
        return session.heartbeat
      case "logout":
        return session.end(message.reason ?? Protocol.LogoutReason.peerShutdown)
      case "output":
        return session.relayOutput(message)
    }
  }

  /**
   * A message for a session not held here, that no live Redis mark routes elsewhere. PostgreSQL
   * says who holds it: a live holder gets it forwarded; a session whose lease ran out is taken over
   * here, then handles it. Only a message carrying the session's own credentials (its token, or for
   * a sealed session its id and a valid MAC) can trigger that.
   */
  const unheld = Effect.fnUntraced(function* (message: PeerMessage, entry: Delivery) {
    const open = yield* store.sessionOf(message.peer_id)
    if (Option.isNone(open)) return false
    const speaksFor = sessionAuthenticator(
      {
        sessionId: open.value.sessionId,
        token: sessionTokenOf(sessionKey, open.value.sessionId),
        sealed: open.value.sealed ?? false,
      },
      { checkMac: config.weakened?.mac !== true },
    )
    if (!speaksFor(message.token, entry.payload)) return false
    const { sessionId, ownerId, expired } = open.value
    if (ownerId !== config.serverId && (!expired || !deps.mayTakeOver(yield* Clock.currentTimeMillis))) {
      yield* transport.forward(ownerId, entry.payload)
      return true
    }
    const taken = yield* store.takeOverSessions({
      serverId: config.serverId,
      leaseMs: config.leaseMs,
      limit: 1,
      sessionId,
    })
    if (taken.length === 0) return yield* Effect.fail(new LeaseLost({ sessionId, epoch: open.value.epoch }))
    yield* registry.adopt(taken)
    const session = registry.get(message.peer_id)
    if (!session) return false
    yield* handleHeld(session, message)
    return true
  })

  const handle = (
    message: Protocol.PeerMessage,
    entry: Delivery,
  ): Effect.Effect<void, StoreError | TransportError | AccessError | LeaseLost | SessionBusy> => {
    if (message.msg === "register") return registration.register(message, entry)
    const session = registry.authenticated(message, entry.payload)
    if (session) return handleHeld(session, message)
    return Effect.gen(function* () {
      // Another instance owns the peer's session: hand the message over, once (never onwards).
      const owner = entry.forwarded ? undefined : yield* transport.ownerOf(message.peer_id)
      if (owner !== undefined && owner !== config.serverId)
        return yield* transport.forward(owner, entry.payload)
      if (yield* unheld(message, entry)) return
      yield* badInput(
        `refused:${message.msg}`,
        Trust.redactSecrets(
          `${message.msg} refused: no session of peer ${message.peer_id} takes its token ` +
            "(or, for a sealed session, its id with a valid MAC)",
        ),
      )
      // A peer that thinks it is logged in (its session timed out, or was replaced) learns it must
      // register again.
      if (message.msg === "heartbeat" && registry.get(message.peer_id) === undefined) {
        yield* registration.sendRejection(message.peer_id, Protocol.RejectReason.sessionExpired)
      }
    })
  }

  /**
   * Tickets were submitted for a session held here: it reads them from PostgreSQL. Whatever a
   * notice carries besides the session is ignored: a job is sent as PostgreSQL holds it.
   */
  const notice = (n: Protocol.ServerNotice) =>
    Effect.gen(function* () {
      const session = registry.byId(n.session_id)
      if (session === undefined) return
      if (n.notice === "cancel_requested") yield* session.cancelRequested(n.tickets)
      else yield* session.refill()
    })

  /**
   * Decodes a batch and says which peers it speaks for; `run` handles it and gives the outcome of
   * every entry. The pump lets a batch run beside the one before when they share no peer: each
   * peer's messages stay in order.
   */
  const prepare = (batch: ReadonlyArray<Delivery>): PreparedBatch => {
    const items: Array<Item> = []
    const peers = new Set<string>()
    let exclusive = false
    for (const entry of batch) {
      const n = entry.forwarded ? Protocol.decodeServerNotice(entry.payload) : undefined
      if (n !== undefined) {
        items.push({ entry, notice: n })
        continue
      }
      const decoded = Protocol.decodePeerMessage(entry.payload)
      if (Result.isFailure(decoded)) {
        items.push({ entry, malformed: decoded.failure })
        continue
      }
      peers.add(decoded.success.peer_id)
      if (decoded.success.msg === "register" || decoded.success.msg === "logout") exclusive = true
      items.push({ entry, message: decoded.success })
    }
    return { peers, exclusive, run: run(items) }
  }

  const run = Effect.fnUntraced(function* (items: ReadonlyArray<Item>) {
    const outcomes = new Map<Delivery, EntryOutcome>()
    const byPeer = new Map<string, Array<[Protocol.PeerMessage, Delivery]>>()
    // Results for sessions held here are recorded together, in one transaction, ahead of the rest:
    // those of a peer that come before any registration or logout of it in this batch.
    const together: Array<HeldResult> = []
    for (const item of items) {
      const { entry } = item
      if ("notice" in item) {
        yield* notice(item.notice)
        outcomes.set(entry, Exit.void)
        continue
      }
      if ("malformed" in item) {
        // Garbage is refused, not retried: nothing it asks for could ever be done.
        yield* badInput(
          `malformed:${item.malformed.reason}`,
          `dropped a malformed message (${item.malformed.reason}): ${item.malformed.message}`,
        )
        outcomes.set(entry, Exit.void)
        continue
      }
      const message = item.message
      const list = byPeer.get(message.peer_id) ?? []
      const session = message.msg === "result" ? registry.authenticated(message, entry.payload) : undefined
      // Live output need not keep its place before a result: a follower reads the stored output.
      if (
        session &&
        message.msg === "result" &&
        list.every(([m]) => m.msg === "heartbeat" || m.msg === "output")
      ) {
        together.push({ session, message, entry })
        continue
      }
      list.push([message, entry])
      byPeer.set(message.peer_id, list)
    }
    const handleAll = (lists: ReadonlyArray<ReadonlyArray<[Protocol.PeerMessage, Delivery]>>) =>
      Effect.forEach(
        lists,
        (list) =>
          Effect.gen(function* () {
            for (const [message, entry] of list) {
              outcomes.set(entry, yield* Effect.exit(handle(message, entry)))
            }
          }),
        // All of a batch's peers at once: what they ask of PostgreSQL in the same turn shares its
        // statements (a storm's registrations, see db/sameTurn.ts), so more side by side is fewer trips.
        { concurrency: "unbounded", discard: true },
      )
    // A peer with results recorded here has the rest of its messages handled after them; the
    // other peers' (forwarded to their holders, mostly) do not wait for that statement.
    const recorded = new Set(together.map((h) => h.message.peer_id))
    const after: Array<Array<[Protocol.PeerMessage, Delivery]>> = []
    const meanwhile: Array<Array<[Protocol.PeerMessage, Delivery]>> = []
    for (const [peerId, list] of byPeer) (recorded.has(peerId) ? after : meanwhile).push(list)
    yield* Effect.all(
      [
        Effect.gen(function* () {
          if (together.length > 0) {
            for (const [entry, outcome] of yield* recorder.record(together)) outcomes.set(entry, outcome)
          }
          yield* handleAll(after)
        }),
        handleAll(meanwhile),
      ],
      { concurrency: 2, discard: true },
    )
    return outcomes
  })

  return { prepare }
})
