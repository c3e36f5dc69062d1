import { Metrics, RunStore, Store, Transport } from "@picus/core"
import { Effect, Metric } from "effect"
import { sweepRuns } from "../runs.ts"
import type { GatewayConfig } from "./config.ts"

/**
 * The deadline sweep, safe on every instance: tickets never delivered by their delivery deadline
 * end undeliverable; tickets delivered to a session that no longer carries them end timed_out.
 * PostgreSQL decides, so even a Redis that lost everything loses no ticket.
 */
export const reconcile = (config: Pick<GatewayConfig, "deliveryDeadlineMs" | "deadlineSlackMs">) =>
  Effect.gen(function* () {
    const store = yield* Store
    const transport = yield* Transport
    yield* sweepRuns.pipe(
      Effect.provideService(RunStore, store),
      Effect.provideService(Transport, transport),
      Effect.catch((error) => Effect.logError(`reconciler: runs: ${error.message}`)),
    )
    const expired = yield* store.expireTickets({
      deliveryDeadlineMs: config.deliveryDeadlineMs,
      executionSlackMs: config.deadlineSlackMs,
    })
    for (const [state, n] of [
      ["undeliverable", expired.undeliverable],
      ["timed_out", expired.timedOut],
    ] as const)
      if (n > 0) yield* Metric.update(Metric.withAttributes(Metrics.ticketsTotal, { state }), n)
    if (expired.undeliverable + expired.timedOut > 0) {
      yield* Effect.logWarning(
        `deadlines passed: ${expired.undeliverable} ticket(s) undeliverable, ${expired.timedOut} timed out`,
      )
    }
  }).pipe(Effect.catch((error) => Effect.logError(`reconciler: ${error.message}`)))
