import { makeTickWheel, type SessionConfig, Store, Transport, Trust, wheelSlots } from "@picus/core"
import { Cause, Effect, Fiber, Redacted, Schema, Semaphore } from "effect"
import type { GatewayConfig } from "./config.ts"
import { makeHearing } from "./Hearing.ts"
import { makeLeaseKeeper } from "./LeaseKeeper.ts"
import { reconcile } from "./Reconciler.ts"
import { type Lifecycle, makeRegistration } from "./Registration.ts"
import { makeResultRecorder } from "./ResultRecorder.ts"
import { retentionLoop } from "./Retention.ts"
import { makeRouter } from "./Router.ts"
import { makeSessionRegistry } from "./SessionRegistry.ts"
import { makeShutdown } from "./Shutdown.ts"
import { signingTransport } from "./Signing.ts"
import { BATCHES_IN_FLIGHT, makeUplinkPump, READ_BLOCK_MS } from "./UplinkPump.ts"

/**
 * The server's front door, one way through:
 *
 *   uplink ─▶ UplinkPump ─▶ Router ─┬─▶ Registration ─▶ SessionRegistry (a PeerSession per peer)
 *      ▲        │ ack after commit  ├─▶ ResultRecorder (one statement per batch) ─▶ PostgreSQL
 *      │        │ retry / dead-letter └─▶ a PeerSession, or forward to its holder, or take it over
 *   LeaseKeeper (renew, take over, drain lost instances) · Reconciler (deadlines) · Shutdown
 *
 * `run` serves until interrupted; it fails only on a defect of its own loops, so the process can
 * exit non-zero for a supervisor to restart it rather than live on serving nothing.
 *
 * Every part is built over a Transport that signs what it writes for peers (see Signing.ts).
 */
export const makeGateway = (config: GatewayConfig) =>
  Effect.gen(function* () {
    const given = yield* Transport
    const signed =
      config.weakened?.unsigned === true ? given : signingTransport(given, config.clusterKey.signing)
    const gateway = yield* build(config).pipe(Effect.provideService(Transport, signed))
    return {
      ...gateway,
      run: gateway.run.pipe(Effect.provideService(Transport, signed)),
      shutdown: (reason: string) => gateway.shutdown(reason).pipe(Effect.provideService(Transport, signed)),
    }
  })

const build = Effect.fnUntraced(function* (config: GatewayConfig) {
  const store = yield* Store
  const transport = yield* Transport
  const hearing = makeHearing({ readBlockMs: READ_BLOCK_MS, heartbeatMs: config.heartbeatMs })
  const sessionKey = Trust.sessionKeyOf(Redacted.value(config.clusterKey.seed))
  // One timer for every session's watchdog (see TickWheel).
  const tickPeriodMs = Math.min(config.heartbeatMs, config.graceMs)
  const ticks = yield* makeTickWheel(tickPeriodMs, wheelSlots(tickPeriodMs))
  const sessionConfig: SessionConfig = {
    ticks,
    ...config,
    sessionKey,
    canHearPeers: hearing.canHear,
    clusterKey: config.clusterKey.publicKey,
    ...(config.clusterKey.previous ? { keyEndorsement: config.clusterKey.previous.endorsement } : {}),
    weakened: { mac: config.weakened?.mac === true },
  }
  const lifecycle: Lifecycle = { accepting: true }
  const batchLock = yield* Semaphore.make(BATCHES_IN_FLIGHT)

  const registry = yield* makeSessionRegistry(config.serverId, config.leaseMs, sessionConfig)
  const registration = yield* makeRegistration(config, sessionKey, registry, lifecycle)
  const leaseKeeper = yield* makeLeaseKeeper(config, registry, batchLock)
  const recorder = yield* makeResultRecorder()
  const router = yield* makeRouter({
    config,
    sessionKey,
    registry,
    registration,
    recorder,
    mayTakeOver: leaseKeeper.mayTakeOver,
  })
  // Alive before the first login, so the others can tell if this instance dies with sessions open.
  yield* store.instanceAlive(config.serverId)
  const reader = yield* transport.uplinkReader(config.serverId)
  const pump = yield* makeUplinkPump({
    config,
    reader,
    hearing,
    registry,
    leaseKeeper,
    prepare: router.prepare,
    batchLock,
  })
  const shutdown = yield* makeShutdown({ config, registry, lifecycle, batchLock })
  const everyThirdOfLease = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.andThen(Effect.sleep(config.leaseMs / 3)), Effect.forever)

  return {
    /** Serves until interrupted. */
    run: Effect.all(
      [
        Effect.forever(pump.turn),
        everyThirdOfLease(leaseKeeper.round),
        everyThirdOfLease(reconcile(config).pipe(Effect.provideService(Store, store))),
        retentionLoop(config.retainDays).pipe(Effect.provideService(Store, store)),
        // A failed write keeps its counts for the next round.
        registration.flushRejections.pipe(Effect.ignore, Effect.delay("10 seconds"), Effect.forever),
      ],
      { concurrency: "unbounded", discard: true },
    ).pipe(Effect.tapCause((cause) => Effect.logError("the gateway failed", cause))),
    shutdown: (reason: string) =>
      shutdown(reason).pipe(Effect.ensuring(registration.flushRejections.pipe(Effect.ignore))),
    /** For tests, health and metrics: what this instance holds and whether its parts answer. */
    status: Effect.sync(() => ({
      sessions: registry.size(),
      retrying: pump.retrying(),
      accepting: lifecycle.accepting,
      leaseRenewedAt: leaseKeeper.renewedAt(),
      ...pump.reading(),
    })),
  }
})

export type Gateway = Effect.Success<ReturnType<typeof makeGateway>>

/** The gateway's own loops stopped: the instance serves nothing any more and must exit non-zero. */
export class GatewayFailed extends Schema.TaggedError<GatewayFailed>()("GatewayFailed", {
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/**
 * Waits for the operator's signal while the gateway serves; fails with GatewayFailed the moment
 * the gateway's loops end instead, so the process does not live on serving nothing.
 */
export const untilSignal = (
  running: Fiber.Fiber<void, unknown>,
  signalled: Effect.Effect<NodeJS.Signals>,
): Effect.Effect<NodeJS.Signals, GatewayFailed> =>
  signalled.pipe(
    Effect.raceFirst(
      Fiber.await(running).pipe(
        Effect.flatMap((exit) =>
          Effect.fail(
            new GatewayFailed({
              message: `the gateway stopped serving: ${
                exit._tag === "Failure" ? (Cause.pretty(exit.cause).split("\n")[0] ?? "") : "it returned"
              }`,
              ...(exit._tag === "Failure" ? { cause: Cause.squash(exit.cause) } : {}),
            }),
          ),
        ),
      ),
    ),
  )
