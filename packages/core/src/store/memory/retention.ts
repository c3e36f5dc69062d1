import { Effect } from "effect"
import { isTerminal } from "../../domain/ticket.ts"
import type { RetentionStoreService } from "../RetentionStore.ts"
import type { MemoryState } from "./state.ts"

/** Removes in place the first `max` items of `items` that `match`; returns how many went. */
const removeWhere = <A>(items: Array<A>, match: (a: A) => boolean, max: number): number => {
  let removed = 0
  for (let i = 0; i < items.length && removed < max; ) {
    if (match(items[i]!)) {
      items.splice(i, 1)
      removed++
    } else i++
  }
  return removed
}

/**
 * As PostgreSQL's: a terminal ticket ended when its result came (else when it was last sent or
 * created, which this store keeps); a session, at its logout.
 */
export const makeMemoryRetention = (memory: MemoryState): RetentionStoreService => ({
  prune: ({ before, batchSize }) =>
    Effect.sync(() => {
      const { tickets, results, log, sessions } = memory
      let prunedTickets = 0
      let prunedResults = 0
      for (const t of [...tickets.values()]) {
        if (prunedTickets >= batchSize) break
        const ended = results.get(t.ticket)?.receivedAt ?? t.deliveredAt ?? t.createdAt
        if (!isTerminal(t.state) || ended >= before) continue
        if (results.delete(t.ticket)) prunedResults++
        tickets.delete(t.ticket)
        prunedTickets++
      }
      const endedSessions = new Set(
        log
          .filter((r) => r.event === "logout" && r.at < before)
          .slice(0, batchSize)
          .map((r) => r.sessionId),
      )
      const logRows =
        removeWhere(log, (r) => r.sessionId !== null && endedSessions.has(r.sessionId), 2 * batchSize) +
        removeWhere(
          log,
          (r) => (r.event === "rejected" || r.event === "shutdown") && r.at < before,
          batchSize,
        )
      let prunedSessions = 0
      for (const id of endedSessions) {
        if (id !== null && sessions.get(id)?.closed === true && sessions.delete(id)) prunedSessions++
      }
      return { tickets: prunedTickets, results: prunedResults, logRows, sessions: prunedSessions }
    }),
})
