import { Metrics, Store } from "@picus/core"
import { Clock, Duration, Effect, Metric } from "effect"

/** Rows of each kind per batch: small, so that no statement holds its locks for long. */
export const PRUNE_BATCH = 500
/** How often an instance looks for what aged out. */
export const PRUNE_EVERY = Duration.minutes(10)

/**
 * One pruning round: batches until none is full, another instance holds the pruning lock, or
 * PostgreSQL fails (next round). Each instance runs rounds; the lock makes them take turns.
 */
export const pruneRound = (retainDays: number) =>
  Effect.gen(function* () {
    const store = yield* Store
    const before = (yield* Clock.currentTimeMillis) - retainDays * 86_400_000
    const total = { tickets: 0, results: 0, logRows: 0, sessions: 0 }
    for (;;) {
      const pruned = yield* store.prune({ before, batchSize: PRUNE_BATCH })
      if (pruned === "skipped") break
      for (const [table, n] of [
        ["tickets", pruned.tickets],
        ["job_results", pruned.results],
        ["registration_log", pruned.logRows],
        ["sessions", pruned.sessions],
      ] as const)
        if (n > 0) yield* Metric.update(Metric.withAttributes(Metrics.prunedRowsTotal, { table }), n)
      total.tickets += pruned.tickets
      total.results += pruned.results
      total.logRows += pruned.logRows
      total.sessions += pruned.sessions
      const full =
        pruned.tickets === PRUNE_BATCH || pruned.logRows >= PRUNE_BATCH || pruned.sessions === PRUNE_BATCH
      if (!full) break
      // Room for the rest of the work between batches.
      yield* Effect.sleep("100 millis")
    }
    if (total.tickets + total.logRows + total.sessions > 0)
      yield* Effect.logInfo(
        `retention (${retainDays} days): pruned ${total.tickets} ticket(s), ${total.results} result(s), ` +
          `${total.logRows} log row(s), ${total.sessions} session(s)`,
      )
    return total
  }).pipe(
    Effect.catch((error) =>
      Effect.logWarning(`retention: ${error.message}; next round`).pipe(Effect.as(undefined)),
    ),
  )

/** Rounds for as long as the gateway runs; nothing when everything is kept (0 days). */
export const retentionLoop = (retainDays: number | undefined) =>
  retainDays === undefined || retainDays <= 0
    ? Effect.never
    : pruneRound(retainDays).pipe(Effect.andThen(Effect.sleep(PRUNE_EVERY)), Effect.forever)
