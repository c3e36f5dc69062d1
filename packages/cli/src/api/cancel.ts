/**
 * `picus cancel` through a server's HTTP API (PICUS_API_URL, an admin token in PICUS_API_TOKEN):
 * the same outcomes, output and exit code as the direct way (cancel.ts). The API records who
 * cancelled as its token's name (`api:<name>`), so `--by` is not taken here.
 */
import { type TicketState, UsageError } from "@picus/core"
import { type CancelFlags, type Outcome, splitNamed, tellOutcomes } from "../commands/cancelView.ts"
import { type Api, ApiError, exitThroughApi, request } from "./client.ts"

type Json = Record<string, unknown>

/** Open while pending, queued or delivered (core's OPEN_TICKET_STATES; not imported: it loads Effect). */
const isOpen = (state: string) => state === "pending" || state === "queued" || state === "delivered"

const outcomeOf = (o: Json): Outcome => {
  const ticket = String(o.ticket)
  if (o.outcome === "closed")
    return { ticket, outcome: "closed", peerId: String(o.peer_id), state: o.state as TicketState }
  if (o.outcome === "cancelled" || o.outcome === "requested")
    return { ticket, outcome: o.outcome, peerId: String(o.peer_id) }
  return { ticket, outcome: "unknown" }
}

const cancel = async (api: Api, flags: CancelFlags, named: ReadonlyArray<string>): Promise<number> => {
  if (flags.by !== undefined)
    throw new UsageError(
      "--by is not taken through the API: it records the operator token's name; leave --by out",
    )
  const { runs, tickets } = splitNamed(named)
  const body = { reason: String(flags.reason) }
  const outcomes: Array<Outcome> = []
  const ofRuns = new Map<string, ReadonlyArray<Outcome> | undefined>()
  /** The outcomes of one cancel request; undefined when the API knows no such run or ticket. */
  const cancelAt = async (path: string): Promise<ReadonlyArray<Outcome> | undefined> => {
    try {
      const answer = await request<{ outcomes: ReadonlyArray<Json> }>(api, "POST", path, body)
      return answer.outcomes.map(outcomeOf)
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return undefined
      throw error
    }
  }
  for (const runId of runs) {
    const done = await cancelAt(`/api/runs/${encodeURIComponent(runId)}/cancel`)
    ofRuns.set(runId, done)
    outcomes.push(...(done ?? []))
  }
  for (const ticket of tickets)
    outcomes.push(
      ...((await cancelAt(`/api/tickets/${encodeURIComponent(ticket)}/cancel`)) ?? [
        { ticket, outcome: "unknown" as const },
      ]),
    )
  // Until each running job's peer reports it (or the wait is over): the API says.
  const final = new Map<string, TicketState>()
  let open = outcomes.filter((o) => o.outcome === "requested").map((o) => o.ticket)
  const until = Date.now() + Number(flags.waitMs)
  while (flags.wait && open.length > 0) {
    for (const t of open) {
      const answer = await request<{ ticket: Json }>(api, "GET", `/api/tickets/${encodeURIComponent(t)}`)
      final.set(t, answer.ticket.state as TicketState)
    }
    open = open.filter((t) => isOpen(final.get(t) ?? "delivered"))
    if (open.length === 0 || Date.now() >= until) break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  return tellOutcomes(ofRuns, outcomes, final, flags.json === true)
}

/** Runs `picus cancel` through the API and exits with its code (2 for a usage mistake). */
export const cancelViaApi = (flags: CancelFlags, named: ReadonlyArray<string>, url: string): Promise<never> =>
  exitThroughApi(url, (api) => cancel(api, flags, named))
