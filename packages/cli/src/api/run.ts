/**
 * `picus run` through a server's HTTP API (PICUS_API_URL or --api-url, an operator token in
 * PICUS_API_TOKEN): for an operator's machine that has no PostgreSQL or Redis credentials, and a
 * command that starts small. The same flags, output and exit codes as the direct way (runs.ts):
 * it subscribes to the event stream first, starts the run, reads the run back whenever one of its
 * tickets ends (and every second, in case an event was lost), and prints the same table.
 * Plain promises, not Effect: this path loads neither the stores nor Effect's runtime.
 */
import type { RunInfo, TicketView } from "@picus/core"
import { printRows } from "server/report"
import {
  dryRunRows,
  EXIT_UNREACHED,
  exitCodeOf,
  isDone,
  printTable,
  progressLine,
  type RunFlags,
  runSpecOf,
  summaryOf,
  ticketJson,
  total,
} from "../commands/runView.ts"
import { type Api, exitThroughApi, openEvents, request } from "./client.ts"

type Json = Record<string, unknown>

/** How often the run is read back when no event says it moved. */
const POLL_MS = 1_000
/** When the event stream is down. */
const POLL_WITHOUT_EVENTS_MS = 250
/** How long results of a burst are gathered before the run is read back. */
const BURST_MS = 50

const amountJson = (amount: { readonly count: number } | { readonly percent: number } | undefined) =>
  amount === undefined ? undefined : "count" in amount ? amount.count : `${amount.percent}%`

const runOf = (r: Json): RunInfo => ({
  runId: r.run_id as string,
  createdAt: r.created_at as number,
  createdBy: r.created_by as string,
  name: r.name as string,
  command: r.command as string,
  timeoutMs: r.timeout_ms as number,
  target: r.target as RunInfo["target"],
  maxConcurrency: r.max_concurrency as number | null,
  maxErrors: r.max_errors as number | null,
  deliverBy: r.deliver_by as number,
  closedAt: r.closed_at as number | null,
  counts: r.counts as RunInfo["counts"],
  offline: r.offline as number,
})

const ticketOf = (t: Json): TicketView => ({
  ticket: t.ticket as string,
  runId: t.run_id as string | null,
  peerId: t.peer_id as string,
  name: t.name as string,
  command: t.command as string,
  state: t.state as TicketView["state"],
  attempts: t.attempts as number,
  closeReason: t.close_reason as string | null,
  createdAt: t.created_at as number,
  deliveredAt: t.delivered_at as number | null,
  finishedAt: t.finished_at as number | null,
  exitCode: t.exit_code as number | null,
  output: t.output as string | null,
  truncated: t.truncated as boolean,
  startedAt: t.started_at as number | null,
  endedAt: t.ended_at as number | null,
  online: t.online as boolean,
})

const readRun = async (api: Api, runId: string) => {
  const answer = await request<{ run: Json; tickets: ReadonlyArray<Json> }>(
    api,
    "GET",
    `/api/runs/${encodeURIComponent(runId)}`,
  )
  return { info: runOf(answer.run), tickets: answer.tickets.map(ticketOf) }
}

/** Output relayed live, a whole line at a time, each prefixed with its peer. */
const liveLines = () => {
  const partial = new Map<string, string>()
  return {
    add: (ticket: string, peer: string, data: string) => {
      const lines = ((partial.get(ticket) ?? "") + data).split("\n")
      partial.set(ticket, lines.pop() ?? "")
      for (const line of lines) process.stdout.write(`${peer}: ${line}\n`)
    },
    flush: (ticket: string, peer: string) => {
      const rest = partial.get(ticket)
      if (rest !== undefined && rest !== "") process.stdout.write(`${peer}: ${rest}\n`)
      partial.delete(ticket)
    },
  }
}

const start = async (api: Api, flags: RunFlags, words: ReadonlyArray<string>): Promise<number> => {
  const spec = runSpecOf(flags, words)
  const json = flags.json === true
  const body = {
    command: spec.command,
    name: spec.name,
    target: spec.target,
    timeout_ms: spec.timeoutMs,
    deliver_within_ms: spec.deliverWithinMs,
    max_concurrency: amountJson(spec.maxConcurrency),
    max_errors: amountJson(spec.maxErrors),
    online_only: spec.onlineOnly,
    allow_empty: spec.allowEmpty,
    dry_run: spec.dryRun,
  }
  if (spec.dryRun) {
    const answer = await request<{ peers: ReadonlyArray<Json> }>(api, "POST", "/api/runs", body)
    const peers = answer.peers.map((p) => ({
      peerId: p.peer_id as string,
      os: p.os as string | null,
      distro: p.distro as string | null,
      online: p.online as boolean,
      labels: p.labels as Record<string, string>,
    }))
    printRows(dryRunRows(peers), json)
    return peers.length === 0 ? EXIT_UNREACHED : 0
  }
  type Created = {
    run_id: string | null
    tickets: number
    ticket_ids: ReadonlyArray<string>
    offline: ReadonlyArray<string>
    skipped: ReadonlyArray<string>
  }
  if (flags.wait === false) {
    const created = await request<Created>(api, "POST", "/api/runs", body)
    if (json) console.log(JSON.stringify({ run_id: created.run_id, tickets: created.tickets }))
    else console.log(created.run_id)
    return created.tickets === 0 ? EXIT_UNREACHED : 0
  }

  // Opened before the run starts, so that its results are heard (one missed while the server's
  // subscription opens is caught by the re-read every second).
  const tty = process.stderr.isTTY === true && !json
  const ids = new Set<string>()
  /** Tickets the stream said ended, not yet read back. */
  const told = new Set<string>()
  const live = liveLines()
  let wake: () => void = () => {}
  let moved = false
  let soon: ReturnType<typeof setTimeout> | undefined
  const stream = openEvents(api, (event) => {
    const ticket = event.ticket
    if (typeof ticket !== "string" || !ids.has(ticket)) return
    if (event.event === "output" && flags.follow === true && !json)
      live.add(ticket, String(event.peer_id), String(event.data))
    else if (event.event === "result" || event.event === "cancelled") {
      if (flags.follow === true && !json) live.flush(ticket, String(event.peer_id))
      told.add(ticket)
      // Results come in bursts: one read for a burst, at once when the last open one ended. With
      // nothing shown as tickets end (no --json, no terminal), only that last read.
      const all = [...ids].every((id) => told.has(id))
      if (!all && !json && !tty) return
      if (all || soon === undefined) {
        clearTimeout(soon)
        soon = setTimeout(
          () => {
            soon = undefined
            moved = true
            wake()
          },
          all ? 0 : BURST_MS,
        )
      }
    }
  })
  let streaming = await stream.connected.then(
    () => true,
    () => false,
  )
  void stream.ended.then(() => {
    streaming = false
  })
  try {
    const startedAt = Date.now()
    const created = await request<Created>(api, "POST", "/api/runs", body)
    for (const id of created.ticket_ids) ids.add(id)
    if (created.run_id === null || created.tickets === 0) {
      if (json) console.log(JSON.stringify({ run_id: created.run_id, tickets: 0 }))
      else console.log(created.run_id)
      return EXIT_UNREACHED
    }
    const runId = created.run_id
    if (tty)
      process.stderr.write(
        `run ${runId}: ${created.tickets} peer(s)${created.offline.length > 0 ? `, ${created.offline.length} offline` : ""}${created.skipped.length > 0 ? `, ${created.skipped.length} skipped (offline)` : ""}\n`,
      )
    const seen = new Set<string>()
    // The run's deadline as the server set it, give or take the request's time: the wait's bound
    // needs no read of it. Nothing to show before the first ticket ends but a terminal's progress
    // line, so the run is first read then (when the stream tells, or after the poll's second).
    const giveUpAt = startedAt + spec.deliverWithinMs + 2 * spec.timeoutMs + 30_000
    let read = tty ? await readRun(api, runId) : undefined
    for (;;) {
      if (read !== undefined) {
        const { info, tickets } = read
        for (const t of tickets) {
          ids.add(t.ticket)
          if (t.finishedAt === null || seen.has(t.ticket)) continue
          seen.add(t.ticket)
          if (json) console.log(JSON.stringify(ticketJson(t)))
        }
        if (tty) process.stderr.write(`\r\x1b[2K${progressLine(info)}`)
        if (isDone(info) && seen.size >= total(info)) break
      }
      if (Date.now() > giveUpAt) break
      if (!moved)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, streaming ? POLL_MS : POLL_WITHOUT_EVENTS_MS)
          wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
      wake = () => {}
      moved = false
      read = await readRun(api, runId)
      for (const t of read.tickets) if (t.finishedAt !== null) told.add(t.ticket)
    }
    const { info, tickets } = read ?? (await readRun(api, runId))
    if (tty) process.stderr.write("\n")
    if (json) console.log(JSON.stringify({ summary: summaryOf(info, created.skipped.length) }))
    else {
      printTable(tickets)
      console.log(progressLine(info))
    }
    return isDone(info) ? exitCodeOf(tickets) : 1
  } finally {
    clearTimeout(soon)
    stream.close()
  }
}

/** Runs `picus run` through the API and exits with its code (2 for a usage mistake, 3 unreached). */
export const runViaApi = (flags: RunFlags, words: ReadonlyArray<string>, url: string): Promise<never> =>
  exitThroughApi(
    url,
    (api) => start(api, flags, words),
    (status) => (status === 422 ? EXIT_UNREACHED : 1),
  )
