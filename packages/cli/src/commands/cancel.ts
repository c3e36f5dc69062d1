/** `picus cancel <ticket...>`: queued tickets end cancelled; running ones are killed on their peer. */
import { userInfo } from "node:os"
import { type CancelOutcome, isTerminal, type TicketState, TicketStore, TransportRedis } from "@picus/core"
import type { CAC } from "cac"
import { Clock, Console, Effect, Option } from "effect"
import { cancelTickets, resolveServerConfig, type ServerFlags, sharedOptions, withStore } from "server"
import { run } from "../support.ts"

type CancelFlags = ServerFlags & {
  reason: string
  by?: string
  wait: boolean
  waitMs: number
  json?: boolean
}

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
      "cancel <ticket> [...more]",
      "Cancel tickets: queued ones end cancelled now, running ones are killed on their peer",
    ),
  )
    .option("--reason <text>", "Why, recorded with the ticket", { default: "cancelled by the operator" })
    .option("--by <name>", "Who cancels, recorded with the ticket (default: your login name)")
    .option("--no-wait", "Return once asked, without waiting for running jobs to stop")
    .option("--wait-ms <ms>", "How long to wait for running jobs to stop", { default: 15_000 })
    .option("--json", "One JSON object per ticket")
    .example('picus cancel 1234 --reason "wrong host"')
    .action((ticket: string, more: ReadonlyArray<string>, flags: CancelFlags) => {
      const config = resolveServerConfig(flags)
      const tickets = [String(ticket), ...more.map(String)]
      const by = flags.by === undefined ? operator() : String(flags.by)
      return run(
        withStore(
          config,
          Effect.gen(function* () {
            const outcomes = yield* cancelTickets({
              tickets,
              by,
              reason: String(flags.reason),
              serverId: "cli",
            })
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
            for (const o of outcomes) {
              if (flags.json) {
                yield* Console.log(
                  JSON.stringify({
                    ticket: o.ticket,
                    outcome: o.outcome,
                    ...(o.outcome === "unknown" ? {} : { peer_id: o.peerId }),
                    ...(o.outcome === "closed" ? { state: o.state } : {}),
                    ...(final.has(o.ticket) ? { state: final.get(o.ticket) } : {}),
                  }),
                )
              } else yield* Console.log(describe(o, final.get(o.ticket)))
            }
            // Exit 1 when a ticket named could not be cancelled: it is unknown, or had ended.
            return outcomes.some((o) => o.outcome === "closed" || o.outcome === "unknown") ? 1 : 0
          }).pipe(
            Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
          ),
        ),
      )
    })
}
