/** `picus cancel <ticket...>`: queued tickets end cancelled; running ones are killed on their peer. */
import { type CancelOutcome, isTerminal, type TicketState, TicketStore, TransportRedis } from "@picus/core"
import type { CAC } from "cac"
import { Clock, Effect, Option } from "effect"
import { cancelRun, cancelTickets, resolveServerConfig, withExistingStore } from "server"
import { run } from "../support.ts"
import { type CancelFlags, defineCancel, operator, splitNamed, tellOutcomes } from "./cancelView.ts"
import { apiUrlOf } from "./runView.ts"

export const registerCancel = (cli: CAC): void => {
  defineCancel(cli).action((ticket: string, more: ReadonlyArray<string>, flags: CancelFlags) => {
    const named = [String(ticket), ...more.map(String)]
    const apiUrl = apiUrlOf(flags)
    if (apiUrl !== undefined)
      return import("../api/cancel.ts").then((api) => api.cancelViaApi(flags, named, apiUrl))
    const config = resolveServerConfig(flags)
    const { runs, tickets } = splitNamed(named)
    const by = flags.by === undefined ? operator() : String(flags.by)
    const reason = String(flags.reason)
    return run(
      withExistingStore(
        config,
        Effect.gen(function* () {
          const outcomes: Array<CancelOutcome> = []
          /** Run ids with what became of their open tickets; none for a run that does not exist. */
          const ofRuns = new Map<string, ReadonlyArray<CancelOutcome> | undefined>()
          for (const runId of runs) {
            const done = yield* cancelRun({ runId, by, reason, serverId: "cli" })
            ofRuns.set(runId, Option.getOrUndefined(done))
            if (Option.isSome(done)) outcomes.push(...done.value)
          }
          if (tickets.length > 0)
            outcomes.push(...(yield* cancelTickets({ tickets, by, reason, serverId: "cli" })))
          const store = yield* TicketStore
          const final = new Map<string, TicketState>()
          const asked = outcomes.filter((o) => o.outcome === "requested").map((o) => o.ticket)
          if (flags.wait && asked.length > 0) {
            // Until each running job's peer reports it (or the wait is over): PostgreSQL says.
            const until = (yield* Clock.currentTimeMillis) + Number(flags.waitMs)
            let open = asked
            while (open.length > 0) {
              for (const t of open) {
                const state = yield* store.ticketState(t)
                if (Option.isSome(state)) final.set(t, state.value)
              }
              open = open.filter((t) => {
                const state = final.get(t)
                return state === undefined || !isTerminal(state)
              })
              if (open.length === 0 || (yield* Clock.currentTimeMillis) >= until) break
              yield* Effect.sleep("200 millis")
            }
          }
          return tellOutcomes(ofRuns, outcomes, final, flags.json === true)
        }).pipe(
          Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
        ),
      ),
    )
  })
}
