import { randomUUID } from "node:crypto"
import {
  type Delivery,
  type JobScheduler,
  LeaseLost,
  newKey,
  type PeerSession,
  Protocol,
  type RecordOutcome,
  resumePeerSession,
  type SessionConfig,
  Store,
  type StoreError,
  sessionTokenOf,
  startPeerSession,
  type TakenSession,
  Transport,
  type TransportError,
} from "@picus/core"
import { Cause, Effect, Exit, Option, Result, Scope, Semaphore } from "effect"
import type { ServerConfig } from "./config.ts"
import { type EnrollmentTokens, enrollmentTokensFrom, verifyEnrollmentToken } from "./tokens.ts"

export interface GatewayConfig extends Omit<SessionConfig, "sessionKey"> {
  /**
   * How long this instance's session leases (and its marks on its peers in Redis) hold without
   * renewal; renewed every third of it. The sessions of an instance silent for this long are taken
   * over by the others, with their tickets; their peers keep their sessions.
   */
  readonly leaseMs: number
  /** The cluster's session key; absent: the one kept in PostgreSQL (created by the first instance). */
  readonly sessionKey?: Uint8Array | undefined
  /** A ticket not delivered by this long after its creation ends undeliverable. */
  readonly deliveryDeadlineMs: number
  readonly enrollment: EnrollmentTokens
  /** Uplink entries per read. */
  readonly batchSize: number
  /** A registration older than this when it is read is dropped: its peer has given up on it. */
  readonly staleRegisterMs: number
  /** Unacknowledged uplink entries idle this long are taken over (their instance died). */
  readonly reclaimIdleMs: number
  /** At shutdown, how long to wait for results of jobs already running. */
  readonly drainMs: number
}

/**
 * The server's front door: reads the uplink (shared with the other instances through the
 * consumer group), decodes each message, authenticates registrations, and hands everything else
 * to the peer's session actor. An entry is acknowledged only once what it asked for is durable;
 * an entry that fails with a store or transport error stays pending and is retried.
 */
export const makeGateway = Effect.fnUntraced(function* (config: GatewayConfig) {
  const store = yield* Store
  const transport = yield* Transport
  const services = yield* Effect.context<Store | Transport | JobScheduler>()
  const scope = yield* Scope.Scope
  /** Sessions taken over per keep-alive round, at most. */
  const TAKE_OVER_BATCH = 500
  const sessions = new Map<string, PeerSession>()
  const sessionsById = new Map<string, PeerSession>()
  let accepting = true
  // While Redis is away (reads fail, or hang through reconnects) no peer can be heard: sessions do
  // not time out meanwhile, and once it is back every session gets a full grace period again, so an
  // outage does not end in a storm of timeouts for peers that were never silent.
  const READ_BLOCK_MS = 1_000
  // A read blocks at most READ_BLOCK_MS when Redis answers; half a second more means it does not.
  const DEAF_AFTER_MS = READ_BLOCK_MS + 500
  /** When the read in progress started (undefined between reads). */
  let readingSince: number | undefined
  let readFailed = false
  // Just after hearing again, a watchdog tick already queued in a session's mailbox must not judge
  // it before the fresh grace period (queued behind it) has reached it.
  let deafUntil = 0
  const deaf = () =>
    readFailed ||
    Date.now() < deafUntil ||
    (readingSince !== undefined && Date.now() - readingSince > DEAF_AFTER_MS)
  // How far behind the uplink this instance reads (the age of the last entry of a full batch).
  // While it is behind, a silent session may only be one whose heartbeats are still queued: no
  // session times out until the backlog is read (a registration storm must not turn into a
  // storm of timeouts and re-registrations).
  let behindMs = 0
  let sharedLag = 0
  let backlogCheckedAt = 0
  let redisEmptied = false
  const sessionKey = config.sessionKey ?? (yield* store.sessionKey(newKey()))
  const sessionConfig: SessionConfig = {
    ...config,
    sessionKey,
    canHearPeers: () => !deaf() && behindMs < config.heartbeatMs,
  }
  // Held while a batch is handled: shutdown takes it to see every session a batch may be opening.
  const batchLock = yield* Semaphore.make(1)

  const sendRejection = (peerId: string, reason: string) =>
    transport.sendToPeer(
      peerId,
      Protocol.encodeMessage({
        msg: "register",
        peer_id: peerId,
        token: Protocol.REJECTED_TOKEN,
        status: "rejected",
        reason,
      }),
    )

  const reject = Effect.fnUntraced(function* (message: Protocol.Register, reason: string) {
    yield* store.logRejected({
      peerId: message.peer_id,
      reason,
      serverId: config.serverId,
      serverIp: message.server_ip,
    })
    yield* sendRejection(message.peer_id, reason)
    yield* transport.publish(
      Protocol.encodeFeedEvent({
        event: "rejected",
        at: Date.now(),
        server_id: config.serverId,
        peer_id: message.peer_id,
        reason,
      }),
    )
    yield* Effect.logWarning(`registration rejected: ${reason}`).pipe(
      Effect.annotateLogs({ peer_id: message.peer_id }),
    )
  })

  const register = Effect.fnUntraced(function* (message: Protocol.Register, entry: Delivery) {
    const sentAt = Number(entry.id.split("-")[0])
    const age = Date.now() - sentAt
    if (age > config.staleRegisterMs) {
      yield* Effect.logWarning(`dropped a registration ${Math.round(age / 1000)}s old`).pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    // A copy the peer sent again while its first was still queued (a busy uplink): the session the
    // first one opened is newer than this copy, and its acceptance is already in the peer's inbox.
    const current = sessions.get(message.peer_id)
    if (current && current.openedAt > sentAt) {
      yield* Effect.logInfo("a registration sent again before its session opened: already answered").pipe(
        Effect.annotateLogs({ peer_id: message.peer_id }),
      )
      return
    }
    if (!accepting) return yield* reject(message, Protocol.RejectReason.shuttingDown)
    const verdict = yield* verifyEnrollmentToken(config.enrollment, message.token).pipe(
      Effect.provideService(Store, store),
    )
    if (Option.isSome(verdict)) return yield* reject(message, verdict.value)

    // A session of this peer held here stops now; the login closes it (and any held elsewhere) as
    // replaced, and takes over its open tickets.
    const previous = sessions.get(message.peer_id)
    if (previous) {
      sessions.delete(message.peer_id)
      yield* previous.release
    }
    // Mark the peer as ours before it hears it is accepted: its first heartbeat may be read by
    // another instance, which must forward it here rather than call the session expired.
    yield* transport.claimPeers(config.serverId, [message.peer_id], config.leaseMs, "take")
    const session = yield* startPeerSession(
      {
        peerId: message.peer_id,
        sessionId: randomUUID(),
        serverIp: message.server_ip,
        os: message.os ?? null,
        distro: message.distro ?? null,
        hostname: message.hostname ?? null,
        agentVersion: message.agent_version ?? null,
      },
      sessionConfig,
    ).pipe(Scope.provide(scope), Effect.provideContext(services))
    yield* keep(session)
  })

  /** Serves a session from now on; forgets it when it ends, unless a newer one took its place. */
  const keep = (session: PeerSession) =>
    Effect.gen(function* () {
      sessions.set(session.peerId, session)
      sessionsById.set(session.sessionId, session)
      yield* session.ended.pipe(
        Effect.andThen(
          Effect.suspend(() => {
            sessionsById.delete(session.sessionId)
            if (sessions.get(session.peerId) !== session) return Effect.void
            sessions.delete(session.peerId)
            return transport.releasePeer(session.peerId, config.serverId).pipe(Effect.ignore)
          }),
        ),
        Effect.forkIn(scope),
      )
    })

  /** Carries on sessions taken over from a lost instance. */
  const adopt = Effect.fnUntraced(function* (taken: ReadonlyArray<TakenSession>) {
    if (taken.length === 0) return
    yield* transport.claimPeers(
      config.serverId,
      taken.map((t) => t.peerId),
      config.leaseMs,
      "take",
    )
    for (const t of taken) {
      const previous = sessions.get(t.peerId)
      if (previous && previous.sessionId !== t.sessionId) yield* previous.release
      const session = yield* resumePeerSession(t, sessionConfig).pipe(
        Scope.provide(scope),
        Effect.provideContext(services),
      )
      yield* keep(session)
    }
  })

  // After this instance could not reach PostgreSQL, the others could not either: give them a lease
  // to renew theirs before taking any session over (no storm of false failovers).
  let takeOverNotBefore = 0

  /**
   * A message for a session not held here, that no live Redis mark routes elsewhere. PostgreSQL
   * says who holds it: a live holder gets it forwarded; a session whose lease ran out is taken over
   * here, then handles it. Only a message carrying the session's own token can trigger that.
   */
  const unheld = Effect.fnUntraced(function* (
    message: Exclude<Protocol.PeerMessage, Protocol.Register>,
    entry: Delivery,
  ) {
    const open = yield* store.sessionOf(message.peer_id)
    if (Option.isNone(open) || sessionTokenOf(sessionKey, open.value.sessionId) !== message.token) {
      return false
    }
    const { sessionId, ownerId, expired } = open.value
    if (ownerId !== config.serverId && (!expired || Date.now() < takeOverNotBefore)) {
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
    yield* adopt(taken)
    const session = sessions.get(message.peer_id)
    if (!session) return false
    yield* handleHeld(session, message)
    return true
  })

  const handleHeld = (
    session: PeerSession,
    message: Exclude<Protocol.PeerMessage, Protocol.Register>,
  ): Effect.Effect<void, StoreError | LeaseLost> => {
    switch (message.msg) {
      case "result":
        return session.result(message).pipe(Effect.asVoid)
      case "heartbeat":
        return session.heartbeat
      case "logout":
        return session.end(message.reason ?? Protocol.LogoutReason.peerShutdown)
    }
  }

  /** The session a message speaks for, if its token is that session's. */
  const sessionOf = (message: { readonly peer_id: string; readonly token: string }) => {
    const session = sessions.get(message.peer_id)
    return session?.authenticate(message.token) ? session : undefined
  }

  const handle = (
    message: Protocol.PeerMessage,
    entry: Delivery,
  ): Effect.Effect<void, StoreError | TransportError | LeaseLost> => {
    if (message.msg === "register") return register(message, entry)
    const session = sessionOf(message)
    if (session) return handleHeld(session, message)
    const log = Effect.annotateLogs({ peer_id: message.peer_id })
    return Effect.gen(function* () {
      // Another instance owns the peer's session: hand the message over, once (never onwards).
      const owner = entry.forwarded ? undefined : yield* transport.ownerOf(message.peer_id)
      if (owner !== undefined && owner !== config.serverId)
        return yield* transport.forward(owner, entry.payload)
      if (yield* unheld(message, entry)) return
      yield* Effect.logWarning(`${message.msg} refused: no session for this peer and token`).pipe(log)
      // A peer that thinks it is logged in (its session timed out, or was replaced) learns it must
      // register again.
      if (message.msg === "heartbeat" && sessions.has(message.peer_id) === false) {
        yield* sendRejection(message.peer_id, Protocol.RejectReason.sessionExpired)
      }
    })
  }

  /** Handles a batch: each peer's messages in order, different peers side by side. Returns what to ack. */
  const handleBatch = Effect.fnUntraced(function* (batch: ReadonlyArray<Delivery>) {
    const done: Array<Delivery> = []
    const failed: Array<Delivery> = []
    const byPeer = new Map<string, Array<[Protocol.PeerMessage, Delivery]>>()
    // Results for sessions held here are recorded together, in one transaction, ahead of the rest:
    // those of a peer that come before any registration or logout of it in this batch.
    const together: Array<{ session: PeerSession; message: Protocol.Result; entry: Delivery }> = []
    for (const entry of batch) {
      const notice = entry.forwarded ? Protocol.decodeServerNotice(entry.payload) : undefined
      if (notice !== undefined) {
        const session = sessionsById.get(notice.session_id)
        if (session) {
          yield* session.refill(
            undefined,
            notice.tickets?.map((t) => ({
              ticket: t.ticket,
              peerId: session.peerId,
              sessionId: session.sessionId,
              jobId: null,
              name: t.job.name,
              os: t.job.os,
              distro: t.job.distro,
              command: t.job.command,
              timeoutMs: t.job.timeout_ms ?? 30_000,
              state: "queued" as const,
              attempts: 0,
              deliveredAt: null,
            })),
          )
        }
        done.push(entry)
        continue
      }
      const decoded = Protocol.decodePeerMessage(entry.payload)
      if (Result.isFailure(decoded)) {
        yield* Effect.logWarning(
          `dropped a malformed message (${decoded.failure.reason}): ${decoded.failure.message}`,
        )
        done.push(entry)
        continue
      }
      const message = decoded.success
      const list = byPeer.get(message.peer_id) ?? []
      const session = message.msg === "result" ? sessionOf(message) : undefined
      if (session && message.msg === "result" && list.every(([m]) => m.msg === "heartbeat")) {
        together.push({ session, message, entry })
        continue
      }
      list.push([message, entry])
      byPeer.set(message.peer_id, list)
    }
    if (together.length > 0) {
      const recorded = yield* Effect.exit(
        store.recordResults(together.map((t) => t.session.toRecord(t.message))),
      )
      if (Exit.isFailure(recorded)) {
        failed.push(...together.map((t) => t.entry))
        yield* Effect.logError("could not record results; they stay pending and are retried", recorded.cause)
      } else {
        const bySession = new Map<PeerSession, Array<{ message: Protocol.Result; verdict: RecordOutcome }>>()
        for (const [i, { session, message, entry }] of together.entries()) {
          const verdict = recorded.value[i]!
          if (verdict === "lease_lost") {
            // Moved on without this instance: let the session go; the retry finds its holder.
            failed.push(entry)
            yield* Effect.forkIn(session.release, scope)
            continue
          }
          done.push(entry)
          bySession.set(session, [...(bySession.get(session) ?? []), { message, verdict }])
        }
        for (const [session, outcomes] of bySession) yield* session.settled(outcomes)
      }
    }
    yield* Effect.forEach(
      byPeer.values(),
      (list) =>
        Effect.gen(function* () {
          for (const [message, entry] of list) {
            const exit = yield* Effect.exit(handle(message, entry))
            if (Exit.isSuccess(exit)) done.push(entry)
            else {
              failed.push(entry)
              const leaseLost = Cause.findErrorOption(exit.cause).pipe(
                Option.exists((e) => e instanceof LeaseLost),
              )
              // A session that moved while its message was in hand: the retry finds its new holder.
              yield* leaseLost
                ? Effect.logInfo(`${message.msg}: its session moved; retrying`)
                : Effect.logError(
                    `could not handle ${message.msg}; it stays pending and is retried`,
                    exit.cause,
                  )
            }
          }
        }),
      { concurrency: 32, discard: true },
    )
    return { done, failed }
  })

  // Alive before the first login, so the others can tell if this instance dies with sessions open.
  yield* store.instanceAlive(config.serverId)
  const reader = yield* transport.uplinkReader(config.serverId)
  let lastReclaim = 0

  // Entries that failed (PostgreSQL away, say) are retried here every second, first in the next
  // batch; they also stay pending in Redis, so another instance takes them if this one dies.
  let retry: ReadonlyArray<Delivery> = []
  let retryAt = 0

  const pump = Effect.gen(function* () {
    const due = retry.length > 0 && Date.now() >= retryAt
    readingSince = Date.now()
    let batch = yield* reader.read({
      count: config.batchSize,
      blockMs: retry.length > 0 ? 200 : READ_BLOCK_MS,
    })
    const wasDeaf = deaf()
    readingSince = undefined
    readFailed = false
    if (wasDeaf || redisEmptied) {
      deafUntil = Date.now() + READ_BLOCK_MS
      yield* Effect.logInfo(`Redis is back: ${sessions.size} session(s) get a fresh grace period`)
      yield* Effect.forEach(sessions.values(), (s) => s.heartbeat, { discard: true })
    }
    if (redisEmptied) {
      // The jobs in the peers' inboxes and the results on their way are gone with it: send every
      // ticket in flight again. A peer never runs one twice; it answers from what it kept.
      redisEmptied = false
      yield* Effect.logWarning("Redis came back without its data: sending the jobs in flight again")
      yield* Effect.forEach(sessions.values(), (s) => s.resendInFlight, { discard: true })
    }
    const lastRead = Date.now()
    const last = batch.at(-1)
    const ownLag =
      batch.length >= config.batchSize && last ? Math.max(0, lastRead - Number(last.id.split("-")[0])) : 0
    // The heartbeats of this instance's peers may wait in the uplink behind another instance's
    // backlog: how far behind all of them are counts too (looked up once a second).
    if (lastRead - backlogCheckedAt >= 1_000) {
      backlogCheckedAt = lastRead
      sharedLag = yield* transport.uplinkBacklogMs.pipe(Effect.orElseSucceed(() => 0))
    }
    const wasBehind = behindMs >= config.heartbeatMs
    behindMs = Math.max(ownLag, sharedLag)
    if (wasBehind && behindMs < config.heartbeatMs) {
      // Caught up: every session gets a full grace period from now, as after a Redis outage.
      yield* Effect.forEach(sessions.values(), (s) => s.heartbeat, { discard: true })
    }
    if (drainDue.length > 0) {
      const lost = drainDue
      drainDue = []
      const retrying = new Set([...retry, ...batch].map((d) => d.id))
      for (const serverId of lost) {
        const left = (yield* reader.drainStreamOf(serverId, config.batchSize)).filter(
          (d) => !retrying.has(d.id),
        )
        if (left.length === 0) continue
        yield* Effect.logInfo(`took over ${left.length} message(s) forwarded to ${serverId}, which is lost`)
        batch = [...left, ...batch]
      }
    }
    if (due) {
      batch = [...retry, ...batch]
      retry = []
    }
    if (Date.now() - lastReclaim > config.reclaimIdleMs / 2) {
      lastReclaim = Date.now()
      // What this instance is already retrying may come back here too: keep one copy of each.
      const retrying = new Set([...retry, ...batch].map((d) => d.id))
      const reclaimed = (yield* reader.reclaim(config.reclaimIdleMs, config.batchSize)).filter(
        (d) => !retrying.has(d.id),
      )
      if (reclaimed.length > 0) {
        yield* Effect.logInfo(`took over ${reclaimed.length} pending message(s)`)
        batch = [...reclaimed, ...batch]
      }
    }
    if (batch.length === 0) return
    const { done, failed } = yield* batchLock.withPermits(1)(handleBatch(batch))
    // What is done is committed: the acknowledgement need not hold up the next read. One that fails
    // leaves its entries pending, to be handled again (harmlessly) after the reclaim delay.
    yield* reader.ack(done).pipe(
      Effect.catch((error) => Effect.logWarning(`could not acknowledge: ${error.message}`)),
      Effect.forkIn(scope),
    )
    if (failed.length > 0) {
      retry = [...retry, ...failed]
      retryAt = Date.now() + 1_000
    }
  }).pipe(
    Effect.catch((error) =>
      Effect.gen(function* () {
        // The consumer groups are gone: Redis restarted without persistence.
        if (error.message.includes("NOGROUP")) redisEmptied = true
        // Deaf from now, and a fresh grace period once a read succeeds.
        readFailed = true
        readingSince = undefined
        yield* Effect.logError(`uplink: ${error.message}; retrying`)
        yield* Effect.sleep("1 second")
      }),
    ),
  )

  /**
   * Every third of the lease: say this instance is alive, renew the leases of its sessions (and
   * let go of those closed or taken elsewhere, e.g. while this instance was paused), take over
   * sessions whose lease ran out, pick up tickets submitted for its sessions, and run the
   * reconciler's sweep of ticket deadlines.
   */
  let cutOff = false
  /** Lost instances whose own stream the pump should drain next. */
  let drainDue: ReadonlyArray<string> = []
  const keepAlive = Effect.gen(function* () {
    yield* store.instanceAlive(config.serverId).pipe(
      Effect.tapError(() =>
        Effect.sync(() => {
          cutOff = true
        }),
      ),
    )
    if (cutOff) {
      cutOff = false
      takeOverNotBefore = Date.now() + config.leaseMs
    }
    const mine = [...sessions.values()]
    const held = new Set(
      yield* store.renewLeases({
        serverId: config.serverId,
        leaseMs: config.leaseMs,
        sessions: mine.map((s) => ({ sessionId: s.sessionId, epoch: s.epoch })),
      }),
    )
    for (const s of mine) if (!held.has(s.sessionId)) yield* s.release
    const kept = mine.filter((s) => held.has(s.sessionId))
    yield* transport.claimPeers(
      config.serverId,
      kept.map((s) => s.peerId),
      config.leaseMs,
      "renew",
    )
    if (Date.now() >= takeOverNotBefore) {
      const taken = yield* store.takeOverSessions({
        serverId: config.serverId,
        leaseMs: config.leaseMs,
        limit: TAKE_OVER_BATCH,
      })
      if (taken.length > 0) {
        const from = [...new Set(taken.map((t) => t.fromServerId))].join(", ")
        yield* Effect.logWarning(`taking over ${taken.length} session(s) of ${from}`)
        yield* adopt(taken)
      }
    }
    // Messages forwarded to a lost instance (in the moments its marks still pointed at it) are
    // drained by the live ones; each goes where PostgreSQL says its session is now.
    drainDue = yield* store.lostInstances({ deadAfterMs: config.leaseMs, byServerId: config.serverId })
    const queued = yield* store.queuedCounts(kept.map((s) => s.sessionId))
    for (const s of kept) {
      const count = queued.get(s.sessionId)
      if (count !== undefined) yield* s.refill(count)
    }
    const expired = yield* store.expireTickets({
      deliveryDeadlineMs: config.deliveryDeadlineMs,
      executionSlackMs: config.deadlineSlackMs,
    })
    if (expired.undeliverable + expired.timedOut > 0) {
      yield* Effect.logWarning(
        `deadlines passed: ${expired.undeliverable} ticket(s) undeliverable, ${expired.timedOut} timed out`,
      )
    }
  }).pipe(Effect.catch((error) => Effect.logError(`keep-alive: ${error.message}`)))

  return {
    /** Serves until interrupted. */
    run: Effect.all(
      [
        Effect.forever(pump),
        keepAlive.pipe(Effect.andThen(Effect.sleep(config.leaseMs / 3)), Effect.forever),
      ],
      { concurrency: 2, discard: true },
    ),
    /**
     * Graceful shutdown: refuse new registrations, log the shutdown with its reason, send every
     * peer `shutdown`, give running jobs `drainMs` to report, then log each peer out.
     */
    shutdown: Effect.fnUntraced(function* (reason: string) {
      // Wait out the batch in hand, so a session it is opening is among those told and logged out.
      yield* batchLock.withPermits(1)(
        Effect.sync(() => {
          accepting = false
        }),
      )
      yield* store.logShutdown({ serverId: config.serverId, reason })
      yield* transport.publish(
        Protocol.encodeFeedEvent({ event: "shutdown", at: Date.now(), server_id: config.serverId, reason }),
      )
      const all = [...sessions.values()]
      // Shutting down keeps the leases: while the sessions drain, nobody may take them over.
      yield* Effect.logInfo(`shutting down (${reason}): notifying ${all.length} peer(s)`)
      yield* Effect.forEach(all, (s) => s.notifyShutdown(reason).pipe(Effect.ignore), {
        concurrency: 32,
        discard: true,
      })
      const deadline = Date.now() + config.drainMs
      while (Date.now() < deadline) {
        const inFlight = yield* Effect.forEach(all, (s) => s.inFlight)
        if (inFlight.every((n) => n === 0)) break
        yield* Effect.sleep("50 millis")
      }
      yield* Effect.forEach(all, (s) => s.end(Protocol.LogoutReason.serverShutdown), {
        concurrency: 32,
        discard: true,
      })
      yield* store.instanceStopped(config.serverId)
    }),
  }
})

/** The gateway a server process runs with its configuration; `extraTokens` are accepted too. */
export const gatewayConfigFrom = (
  config: ServerConfig,
  extraTokens: ReadonlyArray<string> = [],
): GatewayConfig => ({
  serverId: config.serverId,
  leaseMs: config.leaseMs,
  sessionKey: config.sessionKey,
  deliveryDeadlineMs: config.deliveryDeadlineMs,
  deadlineSlackMs: 30_000,
  heartbeatMs: config.heartbeatMs,
  graceMs: config.graceMs,
  drainMs: config.drainMs,
  enrollment: enrollmentTokensFrom([config.environmentTokens ?? "", ...extraTokens].join(",")),
  batchSize: 128,
  staleRegisterMs: 60_000,
  reclaimIdleMs: 30_000,
})
