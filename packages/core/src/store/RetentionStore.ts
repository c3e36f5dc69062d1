import { Context, type Effect } from "effect"
import type { StoreError } from "./StoreError.ts"

/** Rows removed by one batch of pruning, per table. */
export interface Pruned {
  readonly tickets: number
  readonly results: number
  readonly logRows: number
  readonly sessions: number
}

/** What ages out: results, tickets in terminal states, the registration log, closed sessions. */
export interface RetentionStoreService {
  /**
   * Removes at most `batchSize` rows of each kind that ended before `before` (epoch ms): terminal
   * tickets with their results; whole sessions of the log (a login goes with its logout, so
   * `peer_sessions` stays right for the sessions kept; an open session is never touched),
   * refusals and shutdowns; closed session rows. `skipped` when another instance is pruning.
   */
  readonly prune: (options: {
    readonly before: number
    readonly batchSize: number
  }) => Effect.Effect<Pruned | "skipped", StoreError>
}

export class RetentionStore extends Context.Service<RetentionStore, RetentionStoreService>()(
  "@picus/core/RetentionStore",
) {}
