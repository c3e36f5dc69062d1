import { Store, Transport } from "@picus/core"
import { Clock, Effect, type Semaphore } from "effect"
import type { GatewayConfig } from "./config.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"
import { BATCHES_IN_FLIGHT } from "./UplinkPump.ts"

/** Sessions taken over per statement, at most: a round takes batches until none is full. */
const TAKE_OVER_BATCH = 500

/**
 * Owner marks in Redis are renewed a slice at a time: each session's once every this many rounds
 * (ten leases), so a round renews about 1/30 of them instead of all.
 */
const MARK_RENEWAL_ROUNDS = 30

/**
 * How long an owner mark lives: three renewal periods, so a missed round or two lose none. A mark
 * is a routing hint, not a lock: one naming a lost instance only sends messages to its stream,
 * which the live ones drain, and the sessions it named are marked again by whoever takes them over.
 */
export const ownerMarkMs = (leaseMs: number): number => leaseMs * MARK_RENEWAL_ROUNDS

/** A session's slice of the mark renewals: a cheap, stable hash of its id. */
const sliceOf = (sessionId: string): number => {
  let hash = 0
  for (let i = 0; i < sessionId.length; i++) hash = (hash * 31 + sessionId.charCodeAt(i)) >>> 0
  return hash % MARK_RENEWAL_ROUNDS
}

/**
 * Every third of the lease: renews this instance's lease (one row, which holds all its sessions)
 * and lets go of the sessions closed or taken elsewhere (e.g. while it was paused), renews a slice
 * of its owner marks, takes over the sessions of lost instances, names the lost instances whose own
 * streams the pump should drain, and picks up tickets submitted for its sessions. Apart from the
 * pump, as a lock manager is apart from its worker. Takes the instance's first lease when made,
 * before any login.
 */
export const makeLeaseKeeper = Effect.fnUntraced(function* (
  config: GatewayConfig,
  registry: SessionRegistry,
  /** The pump's batch lock: a takeover and a batch never interleave (see below). */
  batchLock: Semaphore.Semaphore,
) {
  const store = yield* Store
  const transport = yield* Transport
  // After this instance could not reach PostgreSQL, the others could not either: give them a lease
  // to renew theirs before taking any session over (no storm of false failovers).
  let takeOverNotBefore = 0
  let cutOff = false
  let rounds = 0
  let renewedAt: number | undefined
  /** Lost instances whose own stream the pump should drain next. */
  let drainDue: ReadonlyArray<string> = []
  const markMs = ownerMarkMs(config.leaseMs)

  yield* store.renewLease({ serverId: config.serverId, leaseMs: config.leaseMs, sessions: [] })

  /** One batch: committed and adopted with no batch of the pump in between. */
  const takeOverBatch = batchLock.withPermits(BATCHES_IN_FLIGHT)(
    Effect.gen(function* () {
      // Between the takeover's commit and the adoption, PostgreSQL says the session is this
      // instance's but the registry does not have it yet: a message of it handled then would take
      // it over a second time (and fence the adoption). So no batch runs meanwhile.
      const taken = yield* store.takeOverSessions({
        serverId: config.serverId,
        leaseMs: config.leaseMs,
        limit: TAKE_OVER_BATCH,
      })
      if (taken.length > 0) {
        const from = [...new Set(taken.map((t) => t.fromServerId))].join(", ")
        yield* Effect.logWarning(`taking over ${taken.length} session(s) of ${from}`)
        yield* registry.adopt(taken)
      }
      return taken.length
    }),
  )

  const round = Effect.gen(function* () {
    const mine = registry.all()
    const held = new Set(
      yield* store
        .renewLease({
          serverId: config.serverId,
          leaseMs: config.leaseMs,
          sessions: mine.map((s) => ({ sessionId: s.sessionId, epoch: s.epoch })),
        })
        .pipe(
          Effect.tapError(() =>
            Effect.sync(() => {
              cutOff = true
            }),
          ),
        ),
    )
    renewedAt = yield* Clock.currentTimeMillis
    if (cutOff) {
      cutOff = false
      takeOverNotBefore = (yield* Clock.currentTimeMillis) + config.leaseMs
    }
    for (const s of mine) if (!held.has(s.sessionId)) yield* s.release
    const kept = mine.filter((s) => held.has(s.sessionId))
    const slice = rounds++ % MARK_RENEWAL_ROUNDS
    yield* transport.claimPeers(
      config.serverId,
      kept.filter((s) => sliceOf(s.sessionId) === slice).map((s) => s.peerId),
      markMs,
      "renew",
    )
    if ((yield* Clock.currentTimeMillis) >= takeOverNotBefore) {
      // In batches, the pump's turns in between; a full batch may have left more.
      let full = true
      while (full) full = (yield* takeOverBatch) === TAKE_OVER_BATCH
    }
    // Messages forwarded to a lost instance (its marks still name it) are drained by the live
    // ones; each goes where PostgreSQL says its session is now.
    drainDue = yield* store.lostInstances({ deadAfterMs: config.leaseMs, byServerId: config.serverId })
    const queued = yield* store.queuedCounts(kept.map((s) => s.sessionId))
    for (const s of kept) {
      const count = queued.get(s.sessionId)
      if (count !== undefined) yield* s.refill(count)
    }
  }).pipe(Effect.catch((error) => Effect.logError(`keep-alive: ${error.message}`)))

  return {
    round,
    mayTakeOver: (now: number) => now >= takeOverNotBefore,
    /** When PostgreSQL last renewed this instance's lease (undefined before the first round). */
    renewedAt: (): number | undefined => renewedAt,
    /** The lost instances to drain, once each round. */
    takeDrainDue: (): ReadonlyArray<string> => {
      const due = drainDue
      drainDue = []
      return due
    },
  }
})

export type LeaseKeeper = Effect.Success<ReturnType<typeof makeLeaseKeeper>>
