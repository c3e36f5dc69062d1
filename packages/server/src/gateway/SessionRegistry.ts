import {
  type JobScheduler,
  type PeerSession,
  resumePeerSession,
  type SessionConfig,
  type SessionStart,
  Store,
  startPeerSession,
  type TakenSession,
  Transport,
} from "@picus/core"
import { Effect, Exit, Option, Scope } from "effect"
import { PeerAccess } from "../access/PeerAccess.ts"
import { ownerMarkMs } from "./LeaseKeeper.ts"

/**
 * The sessions this instance holds, by peer and by session id. Each session's actor runs in a
 * scope of its own, closed when the session ends, so a session that fails or is let go takes its
 * fibers with it and nothing else. Only the gateway's fibers touch the maps.
 */
export const makeSessionRegistry = Effect.fnUntraced(function* (
  serverId: string,
  leaseMs: number,
  sessionConfig: SessionConfig,
) {
  const transport = yield* Transport
  const store = yield* Store
  const access = yield* PeerAccess
  const services = yield* Effect.context<Store | Transport | JobScheduler>()
  const scope = yield* Scope.Scope
  const byPeer = new Map<string, PeerSession>()
  const byId = new Map<string, PeerSession>()

  /**
   * A session that ended here takes its Redis user with it, unless it lives on at another instance
   * (taken over: same session). A newer session's user is never touched (PeerAccess checks).
   */
  const dropAccess = (session: PeerSession) =>
    store.sessionOf(session.peerId).pipe(
      Effect.flatMap((open) =>
        Option.isSome(open) && open.value.sessionId === session.sessionId
          ? Effect.void
          : access.release(session.peerId, session.sessionId),
      ),
      // The reconciler drops what a session left behind.
      Effect.catch((e) => Effect.logWarning(`could not tell where the session went: ${e.message}`)),
    )

  /** Serves a session from now on; forgets it (and closes its scope) when it ends. */
  const keep = (session: PeerSession, own: Scope.Closeable) =>
    Effect.gen(function* () {
      byPeer.set(session.peerId, session)
      byId.set(session.sessionId, session)
      yield* session.ended.pipe(
        Effect.andThen(
          Effect.suspend(() => {
            byId.delete(session.sessionId)
            if (byPeer.get(session.peerId) !== session) return Effect.void
            byPeer.delete(session.peerId)
            // Unless a newer session of the peer took its place here, its mark in Redis goes too.
            return transport.releasePeer(session.peerId, serverId).pipe(Effect.ignore)
          }),
        ),
        Effect.andThen(dropAccess(session)),
        Effect.andThen(Scope.close(own, Exit.void)),
        Effect.forkIn(scope),
      )
    })

  const inOwnScope = <E>(
    make: Effect.Effect<PeerSession, E, Store | Transport | JobScheduler | Scope.Scope>,
  ): Effect.Effect<PeerSession, E> =>
    Effect.gen(function* () {
      const own = yield* Scope.fork(scope)
      const exit = yield* make.pipe(Scope.provide(own), Effect.provideContext(services), Effect.exit)
      if (Exit.isFailure(exit)) {
        yield* Scope.close(own, exit)
        return yield* exit
      }
      yield* keep(exit.value, own)
      return exit.value
    })

  return {
    get: (peerId: string): PeerSession | undefined => byPeer.get(peerId),
    byId: (sessionId: string): PeerSession | undefined => byId.get(sessionId),
    all: (): ReadonlyArray<PeerSession> => [...byPeer.values()],
    size: (): number => byPeer.size,
    /**
     * The session a message speaks for, if it carries that session's credentials: its token
     * (constant-time), or for a sealed session its id and a valid MAC over `payload`, the raw entry.
     */
    authenticated: (message: { readonly peer_id: string; readonly token: string }, payload: string) => {
      const session = byPeer.get(message.peer_id)
      return session?.authenticate(message.token, payload) ? session : undefined
    },
    /** A new login here: a session of this peer held here stops first (the login closes it as replaced). */
    start: Effect.fnUntraced(function* (start: SessionStart) {
      const previous = byPeer.get(start.peerId)
      if (previous) {
        byPeer.delete(start.peerId)
        yield* previous.release
      }
      // Mark the peer as ours before it hears it is accepted: its first heartbeat may be read by
      // another instance, which must forward it here rather than call the session expired.
      yield* transport.claimPeers(serverId, [start.peerId], ownerMarkMs(leaseMs), "take")
      // A session that could not start takes the Redis user granted for it along.
      return yield* inOwnScope(startPeerSession(start, sessionConfig)).pipe(
        Effect.onError(() => access.release(start.peerId, start.sessionId)),
      )
    }),
    /** Carries on sessions taken over from a lost instance. */
    adopt: Effect.fnUntraced(function* (taken: ReadonlyArray<TakenSession>) {
      if (taken.length === 0) return
      yield* transport.claimPeers(
        serverId,
        taken.map((t) => t.peerId),
        ownerMarkMs(leaseMs),
        "take",
      )
      for (const t of taken) {
        const previous = byPeer.get(t.peerId)
        if (previous && previous.sessionId !== t.sessionId) yield* previous.release
        yield* inOwnScope(resumePeerSession(t, sessionConfig))
      }
    }),
  }
})

export type SessionRegistry = Effect.Success<ReturnType<typeof makeSessionRegistry>>
