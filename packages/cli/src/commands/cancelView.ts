/**
 * What `picus cancel` shares between its two ways (PostgreSQL and Redis directly, or a server's
 * HTTP API): its flags and how outcomes are told. Loads neither the stores nor Redis.
 */
import { userInfo } from "node:os"
import type { CancelOutcome, TicketState } from "@picus/core"
import type { CAC, Command } from "cac"
import type { ServerFlags } from "server"
import { sharedOptions } from "server/flags"

export type CancelFlags = ServerFlags & {
  reason: string
  by?: string
  wait: boolean
  waitMs: number
  json?: boolean
  apiUrl?: string
}

/** What became of a ticket named, as the stores and the API tell it (who holds it aside). */
export type Outcome = CancelOutcome extends infer O ? (O extends unknown ? Omit<O, "owner"> : never) : never

export const RUN_ID = /^r\d+$/

/** Who cancels, by default: the operator's login name. */
export const operator = () => {
  try {
    return userInfo().username
  } catch {
    return process.env.USER ?? "operator"
  }
}

export const describe = (o: Outcome, final: TicketState | undefined): string => {
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

/** `picus cancel` with its flags, for both of its ways. */
export const defineCancel = (cli: CAC): Command =>
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
    .option(
      "--api-url <url>",
      "Go through a server's HTTP API (its --http) instead of PostgreSQL and Redis (env PICUS_API_URL; token in PICUS_API_TOKEN)",
    )
    .example('picus cancel 1234 --reason "wrong host"')
    .example("picus cancel r1002")

/** Run ids (`r` and a number, runs.run_id) apart from ticket ids (numbers). */
export const splitNamed = (named: ReadonlyArray<string>) => ({
  runs: named.filter((id) => RUN_ID.test(id)),
  tickets: named.filter((id) => !RUN_ID.test(id)),
})

/**
 * Prints what became of each run and ticket named; returns the exit code: 1 when something named
 * could not be cancelled (an unknown run or ticket, or a ticket named that had ended; a run's
 * ended tickets are no error: it cancels what is open), else 0.
 */
export const tellOutcomes = (
  ofRuns: ReadonlyMap<string, ReadonlyArray<Outcome> | undefined>,
  outcomes: ReadonlyArray<Outcome>,
  final: ReadonlyMap<string, TicketState>,
  json: boolean,
): number => {
  const runOf = new Map<string, string>()
  for (const [runId, done] of ofRuns) for (const o of done ?? []) runOf.set(o.ticket, runId)
  for (const [runId, done] of ofRuns) {
    if (done === undefined)
      console.log(json ? JSON.stringify({ run_id: runId, outcome: "unknown" }) : `run ${runId}: no such run`)
    else if (done.length === 0 && !json) console.log(`run ${runId}: no open ticket; nothing to cancel`)
  }
  for (const o of outcomes) {
    if (json)
      console.log(
        JSON.stringify({
          ticket: o.ticket,
          ...(runOf.has(o.ticket) ? { run_id: runOf.get(o.ticket) } : {}),
          outcome: o.outcome,
          ...(o.outcome === "unknown" ? {} : { peer_id: o.peerId }),
          ...(o.outcome === "closed" ? { state: o.state } : {}),
          ...(final.has(o.ticket) ? { state: final.get(o.ticket) } : {}),
        }),
      )
    else console.log(describe(o, final.get(o.ticket)))
  }
  const missed = outcomes.some(
    (o) => !runOf.has(o.ticket) && (o.outcome === "closed" || o.outcome === "unknown"),
  )
  return missed || [...ofRuns.values()].includes(undefined) ? 1 : 0
}
