import type { StoreError } from "@picus/core"
import { Clock, Effect } from "effect"

/** One refused registration, as the registration log keeps it. */
export interface Rejection {
  readonly peerId: string
  readonly reason: string
  readonly serverIp: string | null
}

export interface RejectionRow {
  readonly peerId: string | null
  readonly reason: string
  readonly serverIp: string | null
  /** How many refusals the row stands for. */
  readonly repeats: number
}

/** Rows written one per refusal: `perSecond` on average, up to `burst` at once. */
export interface RejectionRate {
  readonly perSecond: number
  readonly burst: number
}

/** Each instance writes at most 5 rejection rows a second (50 at once); the rest are counted. */
export const DEFAULT_REJECTION_RATE: RejectionRate = { perSecond: 5, burst: 50 }

/**
 * The registration log's refusals, bounded: within the rate each refusal gets its own row (who,
 * why, from where); beyond it they are counted per reason and written by `flush` as one row each,
 * so a flood of bad registrations from one credential adds a few rows a second, not a row an
 * attempt. Counts that could not be written are kept for the next flush.
 */
export const makeRejectionLog = (
  rate: RejectionRate,
  write: (row: RejectionRow) => Effect.Effect<void, StoreError>,
) => {
  let tokens = rate.burst
  let refilledAt: number | undefined
  const counted = new Map<string, number>()

  const record = (rejection: Rejection): Effect.Effect<void, StoreError> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      tokens = Math.min(rate.burst, tokens + ((now - (refilledAt ?? now)) / 1000) * rate.perSecond)
      refilledAt = now
      if (tokens >= 1) {
        tokens--
        return yield* write({ ...rejection, repeats: 1 })
      }
      counted.set(rejection.reason, (counted.get(rejection.reason) ?? 0) + 1)
    })

  const flush: Effect.Effect<void, StoreError> = Effect.gen(function* () {
    for (const [reason, repeats] of [...counted]) {
      counted.delete(reason)
      yield* write({ peerId: null, reason, serverIp: null, repeats }).pipe(
        Effect.tapError(() =>
          Effect.sync(() => {
            counted.set(reason, (counted.get(reason) ?? 0) + repeats)
          }),
        ),
      )
    }
  })

  return { record, flush, counted: () => [...counted.values()].reduce((a, b) => a + b, 0) }
}
