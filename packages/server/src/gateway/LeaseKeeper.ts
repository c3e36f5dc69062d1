import { Store, Transport } from "@picus/core"
import { Clock, Effect, type Semaphore } from "effect"
import type { GatewayConfig } from "./config.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"

/** Sessions taken over per round, at most. */
const TAKE_OVER_BATCH = 500

/**
 * Every third of the lease: says this instance is alive, renews the leases of its sessions (and
 * lets go of those closed or taken elsewhere, e.g. while it was paused), takes over sessions whose
 * lease ran out, names the lost instances whose own streams the pump should drain, and picks up
 * tickets submitted for its sessions. Apart from the pump, as a lock manager is apart from its worker.
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
  /** Lost instances whose own stream the pump should drain next. */
  let drainDue: ReadonlyArray<string> = []

  const round = Effect.gen(function* () {
    yield* store.instanceAlive(config.serverId).pipe(
      Effect.tapError(() =>
        Effect.sync(() => {
          cutOff = true
        }),
      ),
    )
    if (cutOff) {
      cutOff = false
      takeOverNotBefore = (yield* Clock.currentTimeMillis) + config.leaseMs
    }
    const mine = registry.all()
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
    if ((yield* Clock.currentTimeMillis) >= takeOverNotBefore) {
      // Between the takeover's commit and the adoption, PostgreSQL says the session is this
      // instance's but the registry does not have it yet: a message of it handled then would take
      // it over a second time (and fence the adoption). So no batch runs meanwhile.
      yield* batchLock.withPermits(1)(
        Effect.gen(function* () {
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
        }),
      )
    }
    // Messages forwarded to a lost instance (in the moments its marks still pointed at it) are
    // drained by the live ones; each goes where PostgreSQL says its session is now.
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
    /** The lost instances to drain, once each round. */
    takeDrainDue: (): ReadonlyArray<string> => {
      const due = drainDue
      drainDue = []
      return due
    },
  }
})

export type LeaseKeeper = Effect.Success<ReturnType<typeof makeLeaseKeeper>>
