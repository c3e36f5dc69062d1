/** `picus cancel <ticket...>`: queued tickets end cancelled; running ones are killed on their peer. */
import { userInfo } from "node:os"
import { type CancelOutcome, isTerminal, type TicketState, TicketStore, TransportRedis } from "@picus/core"
import type { CAC } from "cac"
import { Clock, Console, Effect, Option } from "effect"
import {
  cancelRun,
  cancelTickets,
  resolveServerConfig,
  type ServerFlags,
  sharedOptions,
  withExistingStore,
} from "server"
import { run } from "../support.ts"

type CancelFlags = ServerFlags & {
  reason: string
  by?: string
  wait: boolean
  waitMs: number
  json?: boolean
}

const RUN_ID = /^r\d+$/

/** Who cancels, by default: the operator's login name. */
const operator = () => {
  try {
    return userInfo().username
  } catch {
    return process.env.USER ?? "operator"
  }
}

const describe = (o: CancelOutcome, final: TicketState | undefined): string => {
  switch (o.outcome) {
    case "cancelled":
      return `ticket ${o.ticket} (${o.peerId}): cancelled`
    case "requested":
      return final === undefined
        ? `ticket ${o.ticket} (${o.peerId}): running; its peer was asked to stop it`
        : final === "delivered"
          ? `ticket ${o.ticket} (${o.peerId}): still running (its peer may not know cancel: its job ends as it ends)`
          : `ticket ${o.ticket} (${o.peerId}): ${final}`
    case "closed":
      return `ticket ${o.ticket} (${o.peerId}): had already ended ${o.state}; nothing to cancel`
    case "unknown":
      return `ticket ${o.ticket}: no such ticket`
  }
}

export const registerCancel = (cli: CAC): void => {
  sharedOptions(
    cli.command(
      "cancel <run|ticket> [...more]",
      "Cancel a run's open tickets, or tickets: queued ones end cancelled now, running ones are killed on their peer",
    ),
  )
    .option("--reason <text>", "Why, recorded with the ticket", { default: "cancelled by the operator" })
    .option("--by <name>", "Who cancels, recorded with the ticket (default: your login name)")
    .option("--no-wait", "Return once asked, without waiting for running jobs to stop")
    .option("--wait-ms <ms>", "How long to wait for running jobs to stop", { default: 15_000 })
    .option("--json", "One JSON object per ticket")
    .example('picus cancel 1234 --reason "wrong host"')
    .example("picus cancel r1002")
    .action((ticket: string, more: ReadonlyArray<string>, flags: CancelFlags) => {
      const config = resolveServerConfig(flags)
      const named = [String(ticket), ...more.map(String)]
      // Run ids are `r` and a number (runs.run_id); ticket ids are numbers.
      const runs = named.filter((id) => RUN_ID.test(id))
      const tickets = named.filter((id) => !RUN_ID.test(id))
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
            const runOf = new Map<string, string>()
            for (const [runId, done] of ofRuns) for (const o of done ?? []) runOf.set(o.ticket, runId)
            for (const [runId, done] of ofRuns) {
              if (done === undefined)
                yield* Console.log(
                  flags.json
                    ? JSON.stringify({ run_id: runId, outcome: "unknown" })
                    : `run ${runId}: no such run`,
                )
              else if (done.length === 0 && !flags.json)
                yield* Console.log(`run ${runId}: no open ticket; nothing to cancel`)
            }
            for (const o of outcomes) {
              if (flags.json) {
                yield* Console.log(
                  JSON.stringify({
                    ticket: o.ticket,
                    ...(runOf.has(o.ticket) ? { run_id: runOf.get(o.ticket) } : {}),
                    outcome: o.outcome,
                    ...(o.outcome === "unknown" ? {} : { peer_id: o.peerId }),
                    ...(o.outcome === "closed" ? { state: o.state } : {}),
                    ...(final.has(o.ticket) ? { state: final.get(o.ticket) } : {}),
                  }),
                )
              } else yield* Console.log(describe(o, final.get(o.ticket)))
            }
            // Exit 1 when something named could not be cancelled: an unknown run or ticket, or a
            // ticket named that had ended. A run's ended tickets are no error: it cancels what is open.
            const missed = outcomes.some(
              (o) => !runOf.has(o.ticket) && (o.outcome === "closed" || o.outcome === "unknown"),
            )
            return missed || [...ofRuns.values()].includes(undefined) ? 1 : 0
          }).pipe(
            Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
          ),
        ),
      )
    })
}
