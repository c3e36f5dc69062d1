import { Effect } from "effect"
import { LeaseLost } from "../../domain/lease.ts"
import { isTerminal, ticketStateOf } from "../../domain/ticket.ts"
import {
  CANCELLED_ON_PEER,
  type NewResult,
  type RecordOutcome,
  ResultStore,
  type ResultStoreService,
} from "../ResultStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryResults = (memory: MemoryState): ResultStoreService => {
  const { tickets, results, holds } = memory
  const record = (r: NewResult): Effect.Effect<RecordOutcome, LeaseLost> =>
    Effect.suspend(() => {
      if (!holds(r.sessionId, r.epoch)) {
        return Effect.fail(new LeaseLost({ sessionId: r.sessionId, epoch: r.epoch }))
      }
      const t = tickets.get(r.ticket)
      if (!t) return Effect.succeed("unknown_ticket" as const)
      if (t.peerId !== r.peerId || t.sessionId !== r.sessionId)
        return Effect.succeed("foreign_ticket" as const)
      if (results.has(r.ticket)) return Effect.succeed("duplicate" as const)
      if (isTerminal(t.state) || t.state === "pending") return Effect.succeed("ticket_closed" as const)
      t.state = ticketStateOf(r.status)
      if (t.state === "cancelled") t.closeReason = t.cancelReason ?? CANCELLED_ON_PEER
      // A job is sent before its delivery is marked: a result may come first.
      t.deliveredAt ??= Date.now()
      t.attempts = Math.max(t.attempts, 1)
      results.set(r.ticket, {
        ticket: r.ticket,
        peerId: r.peerId,
        jobName: t.name,
        status: r.status,
        exitCode: r.exitCode,
        output: r.output,
        truncated: r.truncated,
        receivedAt: Date.now(),
      })
      return Effect.succeed("recorded" as const)
    })

  const recordAll = (rs: ReadonlyArray<NewResult>) =>
    Effect.forEach(rs, (r) =>
      record(r).pipe(Effect.catchTag("LeaseLost", () => Effect.succeed("lease_lost" as const))),
    )
  return ResultStore.of({
    recordResult: (r) => record(r),
    recordResults: recordAll,
    recordResultBatch: (rs) =>
      Effect.map(recordAll(rs), (outcomes) => ({
        outcomes,
        runs: [
          ...new Set(
            rs.flatMap((r, i) => {
              const runId = outcomes[i] === "recorded" ? tickets.get(r.ticket)?.runId : undefined
              return runId == null ? [] : [runId]
            }),
          ),
        ],
      })),
  })
}
