import {
  type Delivery,
  LeaseLost,
  type NewResult,
  type PeerSession,
  type Protocol,
  type RecordOutcome,
  RunStore,
  Store,
  type StoreError,
  storeFailureKind,
  Transport,
} from "@picus/core"
import { Effect, Exit, Scope } from "effect"
import { advanceRuns } from "../runs.ts"

export interface HeldResult {
  readonly session: PeerSession
  readonly message: Protocol.Result
  readonly entry: Delivery
}

/** What became of one entry: done (acknowledge it), or failed with why (retry or set aside). */
export type EntryOutcome = Exit.Exit<void, unknown>

/**
 * Records results of sessions held here together: one statement (one transaction) for the whole
 * batch. A batch the database refuses is split in halves until the entries it refuses stand alone,
 * so one poisoned result costs its neighbours a few statements, never their place; a database that
 * cannot be reached fails them all (they are retried as they are).
 */
export const makeResultRecorder = Effect.fnUntraced(function* () {
  const store = yield* Store
  const transport = yield* Transport
  const scope = yield* Scope.Scope
  /** Runs whose tickets ended in a batch go on (once per batch, beside it: acknowledgments need not wait). */
  const advance = (runs: ReadonlyArray<string>) =>
    runs.length === 0
      ? Effect.void
      : advanceRuns(runs).pipe(
          Effect.provideService(RunStore, store),
          Effect.provideService(Transport, transport),
          Effect.catch((error) =>
            Effect.logWarning(`runs: advance failed (the sweep retries): ${error.message}`),
          ),
          Effect.forkIn(scope),
          Effect.asVoid,
        )

  const recordSplitting = (
    rows: ReadonlyArray<NewResult>,
  ): Effect.Effect<ReadonlyArray<Exit.Exit<RecordOutcome | "lease_lost", StoreError>>> =>
    store.recordResultBatch(rows).pipe(
      Effect.tap(({ runs }) => advance(runs)),
      Effect.map(({ outcomes }) => outcomes.map((v) => Exit.succeed(v))),
      Effect.catch((error) => {
        if (rows.length === 1 || storeFailureKind(error) === "unavailable") {
          return Effect.succeed(rows.map(() => Exit.fail(error)))
        }
        const half = Math.ceil(rows.length / 2)
        return Effect.all([recordSplitting(rows.slice(0, half)), recordSplitting(rows.slice(half))]).pipe(
          Effect.map(([a, b]) => [...a, ...b]),
        )
      }),
    )

  /** The outcome of each entry, in order; settles the sessions' windows with what was recorded. */
  const record = Effect.fnUntraced(function* (held: ReadonlyArray<HeldResult>) {
    const exits = yield* recordSplitting(held.map((h) => h.session.toRecord(h.message)))
    const outcomes = new Map<Delivery, EntryOutcome>()
    const bySession = new Map<PeerSession, Array<{ message: Protocol.Result; verdict: RecordOutcome }>>()
    for (const [i, { session, message, entry }] of held.entries()) {
      const exit = exits[i]!
      if (Exit.isFailure(exit)) {
        outcomes.set(entry, exit)
        continue
      }
      if (exit.value === "lease_lost") {
        // Moved on without this instance: let the session go; the retry finds its holder.
        outcomes.set(entry, Exit.fail(new LeaseLost({ sessionId: session.sessionId, epoch: session.epoch })))
        yield* Effect.forkIn(session.release, scope)
        continue
      }
      outcomes.set(entry, Exit.void)
      bySession.set(session, [...(bySession.get(session) ?? []), { message, verdict: exit.value }])
    }
    for (const [session, recorded] of bySession) yield* session.settled(recorded)
    return outcomes
  })

  return { record }
})
