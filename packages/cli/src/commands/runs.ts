/**
 * Runs across the fleet: `picus run [target] -- <command>` (one ticket per targeted peer, rolled out
 * under bounds, waited for), `picus run show <id>`, `picus runs`, `picus ticket <id>`,
 * `picus tickets --open` and `picus peers`. Everything read comes from PostgreSQL.
 */
import { type CreatedRun, NoMatchingPeers, RunStore, type TicketView, UsageError } from "@picus/core"
import type { CAC } from "cac"
import { Clock, Effect, Fiber } from "effect"
import {
  printRows,
  resolveServerConfig,
  type ServerFlags,
  sharedOptions,
  startRun,
  transportLayer,
  withExistingStore,
  withStore,
} from "server"
import { run } from "../support.ts"
import { followTicket, printLiveOutput } from "./follow.ts"
import {
  apiUrlOf,
  defineRun,
  dryRunRows,
  durationOf,
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
} from "./runView.ts"

/**
 * Waits for the run to end, reading PostgreSQL: the counts (one aggregate over the run's tickets)
 * every ~50 ms, the tickets that ended since the last read only when the counts moved. Gives up
 * after the run's deadline and twice its job timeout with a margin, in case no server is sweeping.
 */
const waitFor = Effect.fnUntraced(function* (created: CreatedRun, json: boolean, timeoutMs: number) {
  const store = yield* RunStore
  const runId = created.runId!
  const tty = process.stderr.isTTY === true && !json
  const seen = new Map<string, TicketView>()
  let watermark = 0
  let lastDone = -1
  let info = (yield* store.runInfo(runId))!
  const giveUpAt = info.deliverBy + 2 * timeoutMs + 30_000
  for (;;) {
    const done =
      total(info) - (info.counts.pending ?? 0) - (info.counts.queued ?? 0) - (info.counts.delivered ?? 0)
    if (done !== lastDone) {
      lastDone = done
      // Commits may land out of their finished_at order: read back a little, keep each once.
      const ended = yield* store.runTickets(runId, { endedSince: Math.max(0, watermark - 5_000) })
      for (const t of ended) {
        if (seen.has(t.ticket) || t.finishedAt === null) continue
        seen.set(t.ticket, t)
        watermark = Math.max(watermark, t.finishedAt)
        if (json) console.log(JSON.stringify(ticketJson(t)))
      }
    }
    if (tty) process.stderr.write(`\r\x1b[2K${progressLine(info)}`)
    if (isDone(info) && seen.size >= total(info)) break
    if ((yield* Clock.currentTimeMillis) > giveUpAt) break
    yield* Effect.sleep(isDone(info) ? 20 : 50)
    info = (yield* store.runInfo(runId))!
  }
  if (tty) process.stderr.write("\n")
  const tickets = yield* store.runTickets(runId)
  if (json) console.log(JSON.stringify({ summary: summaryOf(info, created.skipped.length) }))
  else {
    printTable(tickets)
    console.log(progressLine(info))
  }
  return isDone(info) ? exitCodeOf(tickets) : 1
})

const runCommandLine = (flags: RunFlags, words: ReadonlyArray<string>) => {
  const spec = runSpecOf(flags, words)
  const jobTimeoutMs = spec.timeoutMs
  const json = flags.json === true
  const config = resolveServerConfig(flags)
  return withExistingStore(
    config,
    Effect.gen(function* () {
      const created = yield* startRun(spec)
      if (spec.dryRun) {
        printRows(dryRunRows(created.peers), json)
        return created.peers.length === 0 ? EXIT_UNREACHED : 0
      }
      if (flags.wait === false || created.tickets.length === 0) {
        if (json) console.log(JSON.stringify({ run_id: created.runId, tickets: created.tickets.length }))
        else console.log(created.runId)
        return created.tickets.length === 0 ? EXIT_UNREACHED : 0
      }
      if (!json && process.stderr.isTTY === true) {
        const offline = created.peers.filter((p) => !p.online).length
        process.stderr.write(
          `run ${created.runId}: ${created.tickets.length} peer(s)${offline > 0 ? `, ${offline} offline` : ""}${created.skipped.length > 0 ? `, ${created.skipped.length} skipped (offline)` : ""}\n`,
        )
      }
      if (flags.follow !== true || json) return yield* waitFor(created, json, jobTimeoutMs)
      // The run's tickets as they are now: a pending one let go later comes back under a new id.
      const ids = new Set(created.tickets.map((t) => t.ticket))
      const runStore = yield* RunStore
      const refresh = runStore.runTickets(created.runId!).pipe(
        Effect.tap((ts) =>
          Effect.sync(() => {
            for (const t of ts) ids.add(t.ticket)
          }),
        ),
        Effect.ignore,
        Effect.andThen(Effect.sleep("1 second")),
        Effect.forever,
      )
      const live = yield* Effect.forkChild(
        Effect.all([printLiveOutput((t) => ids.has(t)), refresh], { concurrency: 2 }),
      )
      return yield* waitFor(created, json, jobTimeoutMs).pipe(Effect.ensuring(Fiber.interrupt(live)))
    }).pipe(
      Effect.catchIf(
        (error): error is NoMatchingPeers => error instanceof NoMatchingPeers,
        (error) =>
          Effect.sync(() => {
            console.error(`error: ${error.message}`)
            return EXIT_UNREACHED
          }),
      ),
      Effect.provide(transportLayer(config)),
    ),
  )
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

const showRun = (flags: ServerFlags & { json?: boolean }, runId: string) =>
  withStore(
    resolveServerConfig(flags),
    Effect.gen(function* () {
      const store = yield* RunStore
      const info = yield* store.runInfo(runId)
      if (info === undefined) throw new UsageError(`no run ${runId} (see picus runs)`)
      const tickets = yield* store.runTickets(runId)
      if (flags.json === true) {
        console.log(
          JSON.stringify({ ...summaryOf(info, 0), run: info, tickets: tickets.map(ticketJson) }, null, 2),
        )
        return
      }
      console.log(`run ${info.runId} "${info.name}": ${info.command}`)
      console.log(`target ${JSON.stringify(info.target)}; ${progressLine(info)}`)
      printRows(
        tickets.map((t) => ({
          ticket: t.ticket,
          peer: t.peerId,
          state: t.state,
          online: t.online,
          exit: t.exitCode,
          duration: durationOf(t),
          output: t.output ?? t.closeReason,
        })),
        false,
      )
    }),
    false,
    true,
  )

export const registerRuns = (cli: CAC): void => {
  defineRun(cli).action((words: ReadonlyArray<string>, flags: RunFlags) => {
    const given = words.map(String)
    if (given[0] === "show" && (flags["--"] ?? []).length === 0) {
      if (given[1] === undefined) return run(Effect.fail(new UsageError("picus run show <run id>")))
      return run(showRun(flags, given[1]))
    }
    const apiUrl = apiUrlOf(flags)
    if (apiUrl !== undefined)
      return import("../api/run.ts").then((api) => api.runViaApi(flags, given, apiUrl))
    return run(Effect.suspend(() => runCommandLine(flags, given)))
  })

  sharedOptions(cli.command("runs", "Recent runs, with their tickets' counts"))
    .option("--limit <n>", "Most rows", { default: 20 })
    .option("--json", "Machine-readable output")
    .action((flags: ServerFlags & { limit: number; json?: boolean }) =>
      run(
        withStore(
          resolveServerConfig(flags),
          Effect.gen(function* () {
            const runs = yield* (yield* RunStore).recentRuns(Number(flags.limit))
            printRows(
              runs.map((r) => {
                const s = summaryOf(r, 0)
                return {
                  run: r.runId,
                  created: iso(r.createdAt),
                  name: r.name,
                  total: s.total,
                  succeeded: s.succeeded,
                  failed: s.failed,
                  timed_out: s.timed_out,
                  cancelled: s.cancelled,
                  undeliverable: s.undeliverable,
                  open: s.pending + s.running,
                  closed: iso(r.closedAt),
                }
              }),
              flags.json === true,
            )
          }),
          false,
          true,
        ),
      ),
    )

  sharedOptions(
    cli.command("ticket <id>", "One ticket: full output, exit code, timings, attempts, run, why it ended"),
  )
    .option("--json", "Machine-readable output")
    .option("--follow", "Print its output as it comes, until it ends; exit 0 if it succeeded, else 1")
    .example("picus ticket 1234 --follow")
    .action((id: string, flags: ServerFlags & { json?: boolean; follow?: boolean }) =>
      run(
        flags.follow === true
          ? followTicket(String(id), resolveServerConfig(flags))
          : withStore(
              resolveServerConfig(flags),
              Effect.gen(function* () {
                const t = yield* (yield* RunStore).ticketView(String(id))
                if (t === undefined) throw new UsageError(`no ticket ${id}`)
                if (flags.json === true) return console.log(JSON.stringify(ticketJson(t), null, 2))
                for (const [k, v] of Object.entries({
                  ticket: t.ticket,
                  run: t.runId,
                  peer: `${t.peerId}${t.online ? " (online)" : " (offline)"}`,
                  name: t.name,
                  command: t.command,
                  state: t.state,
                  "close reason": t.closeReason,
                  "exit code": t.exitCode,
                  attempts: t.attempts,
                  created: iso(t.createdAt),
                  delivered: iso(t.deliveredAt),
                  started: iso(t.startedAt),
                  ended: iso(t.endedAt ?? t.finishedAt),
                  duration: durationOf(t),
                  truncated: t.truncated ? "yes" : null,
                }))
                  if (v !== null) console.log(`${`${k}:`.padEnd(14)}${v}`)
                if (t.output !== null) console.log(`output:\n${t.output}`)
              }),
              false,
              true,
            ),
      ),
    )

  sharedOptions(
    cli.command("tickets", "Tickets: --open lists those not ended yet (pending, queued, delivered)"),
  )
    .option("--open", "Only open tickets (the only listing so far)")
    .option("--peer <id>", "Only this peer's")
    .option("--run <id>", "Only this run's")
    .option("--limit <n>", "Most rows", { default: 100 })
    .option("--json", "Machine-readable output")
    .action(
      (flags: ServerFlags & { open?: boolean; peer?: string; run?: string; limit: number; json?: boolean }) =>
        run(
          Effect.suspend(() => {
            if (flags.open !== true) throw new UsageError("picus tickets --open (closed ones: picus results)")
            return withStore(
              resolveServerConfig(flags),
              Effect.gen(function* () {
                const tickets = yield* (yield* RunStore).openTickets({
                  limit: Number(flags.limit),
                  ...(flags.peer === undefined ? {} : { peerId: String(flags.peer) }),
                  ...(flags.run === undefined ? {} : { runId: String(flags.run) }),
                })
                printRows(
                  tickets.map((t) =>
                    flags.json === true
                      ? ticketJson(t)
                      : {
                          ticket: t.ticket,
                          run: t.runId,
                          peer: t.peerId,
                          state: t.state,
                          online: t.online,
                          attempts: t.attempts,
                          created: iso(t.createdAt),
                          name: t.name,
                        },
                  ),
                  flags.json === true,
                )
              }),
              false,
              true,
            )
          }),
        ),
    )
}
