import { Trust } from "@picus/core"
import { Clock, Effect } from "effect"

/**
 * Log lines about bad input, at most one per kind per interval: the first is written at once, the
 * rest are counted and summed up in the next line of that kind. A flood of garbage costs a line
 * every interval, not a line per message. Lines quote what came in, so anything shaped like a
 * secret (pasted into the wrong field, say) is redacted first.
 */
export const makeRateLimitedLog = (
  intervalMs = 10_000,
  write: (line: string) => Effect.Effect<void> = (line) => Effect.logWarning(line),
) => {
  const kinds = new Map<string, { until: number; suppressed: number }>()
  return (kind: string, line: string): Effect.Effect<void> =>
    Effect.gen(function* () {
      const now = yield* Clock.currentTimeMillis
      const seen = kinds.get(kind)
      if (seen && now < seen.until) {
        seen.suppressed++
        return
      }
      const more = seen && seen.suppressed > 0 ? ` (and ${seen.suppressed} more like it since)` : ""
      kinds.set(kind, { until: now + intervalMs, suppressed: 0 })
      yield* write(Trust.redactSecrets(`${line}${more}`))
    })
}
