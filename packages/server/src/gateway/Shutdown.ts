import { Protocol, Store, Transport } from "@picus/core"
import { Clock, Effect, type Semaphore } from "effect"
import type { GatewayConfig } from "./config.ts"
import type { Lifecycle } from "./Registration.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"
import { BATCHES_IN_FLIGHT } from "./UplinkPump.ts"

const SHUTDOWN_CONCURRENCY = 256

/**
 * Graceful shutdown: refuse new registrations, log the shutdown with its reason, send every peer
 * `shutdown`, give running jobs `drainMs` to report, then log each peer out. Every wait is bounded:
 * a stuck session delays it by its ask timeout at most, never for ever.
 */
export const makeShutdown = Effect.fnUntraced(function* (deps: {
  readonly config: GatewayConfig
  readonly registry: SessionRegistry
  readonly lifecycle: Lifecycle
  readonly batchLock: Semaphore.Semaphore
}) {
  const { config, registry, lifecycle } = deps
  const store = yield* Store
  const transport = yield* Transport
  const askTimeoutMs = config.askTimeoutMs ?? 30_000

  return Effect.fnUntraced(function* (reason: string) {
    // Wait out the batches in hand, so a session they are opening is among those told and logged out.
    yield* deps.batchLock
      .withPermits(BATCHES_IN_FLIGHT)(Effect.void)
      .pipe(
        Effect.timeoutOrElse({
          duration: askTimeoutMs,
          orElse: () => Effect.logWarning("the batch in hand did not finish in time; shutting down anyway"),
        }),
      )
    lifecycle.accepting = false
    yield* store.logShutdown({ serverId: config.serverId, reason })
    const at = yield* Clock.currentTimeMillis
    yield* transport.publish(() =>
      Protocol.encodeFeedEvent({
        event: "shutdown",
        at,
        server_id: config.serverId,
        reason,
      }),
    )
    const all = registry.all()
    // Shutting down keeps the leases: while the sessions drain, nobody may take them over.
    yield* Effect.logInfo(`shutting down (${reason}): notifying ${all.length} peer(s)`)
    // Many at a time: their sends share round trips, their logouts statements (db/sameTurn.ts).
    yield* Effect.forEach(all, (s) => s.notifyShutdown(reason).pipe(Effect.ignore), {
      concurrency: SHUTDOWN_CONCURRENCY,
      discard: true,
    })
    const deadline = (yield* Clock.currentTimeMillis) + config.drainMs
    while ((yield* Clock.currentTimeMillis) < deadline) {
      const inFlight = yield* Effect.forEach(all, (s) => s.inFlight.pipe(Effect.orElseSucceed(() => 0)))
      if (inFlight.every((n) => n === 0)) break
      yield* Effect.sleep("50 millis")
    }
    yield* Effect.forEach(
      all,
      (s) =>
        s
          .end(Protocol.LogoutReason.serverShutdown)
          .pipe(Effect.catch((e) => Effect.logWarning(`could not log ${s.peerId} out: ${e.message}`))),
      { concurrency: SHUTDOWN_CONCURRENCY, discard: true },
    )
    yield* store.instanceStopped(config.serverId)
  })
})
