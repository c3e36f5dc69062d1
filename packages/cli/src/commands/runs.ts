/**
 * Runs across the fleet: `picus run [target] -- <command>` (one ticket per targeted peer, rolled out
 * under bounds, waited for), `picus run show <id>`, `picus runs`, `picus ticket <id>`,
 * `picus tickets --open` and `picus peers`. Everything read comes from PostgreSQL.
 */
import {
  type CreatedRun,
  NoMatchingPeers,
  type RunAmount,
  type RunInfo,
  RunStore,
  type RunTarget,
  type TicketView,
  UsageError,
} from "@picus/core"
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

/** Exit code of a run that reached no peer (all undeliverable or skipped, or none matched). */
export const EXIT_UNREACHED = 3

type Many = string | number | ReadonlyArray<string | number> | undefined
const many = (value: Many): ReadonlyArray<string> =>
  value === undefined ? [] : Array.isArray(value) ? value.map(String) : [String(value)]

/** `N` or `P%` (a rollout bound, SSM's form). */
export const parseAmount = (flag: string, value: unknown): RunAmount | undefined => {
  if (value === undefined) return undefined
  const text = String(value).trim()
  const m = /^(\d+)(%?)$/.exec(text)
  if (m === null) throw new UsageError(`${flag} takes a count or a percentage (10 or 25%), got "${text}"`)
  const n = Number(m[1])
  if (m[2] === "%") {
    if (n < 1 || n > 100) throw new UsageError(`${flag}: a percentage from 1% to 100%, got "${text}"`)
    return { percent: n }
  }
  if (flag === "--max-concurrency" && n < 1) throw new UsageError(`${flag} must be at least 1, got "${text}"`)
  return { count: n }
}

/** `90`, `90s`, `500ms`, `10m`, `1h` (a bare number is seconds). */
export const parseDuration = (flag: string, value: unknown, fallbackMs: number): number => {
  if (value === undefined || value === "") return fallbackMs
  const text = String(value).trim()
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text)
  if (m === null) throw new UsageError(`${flag} takes a duration (500ms, 30s, 10m, 1h), got "${text}"`)
  const ms = Number(m[1]) * { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!
  if (!(ms > 0) || ms > 2_147_483_647)
    throw new UsageError(`${flag}: more than 0 and less than 24 days, got "${text}"`)
  return Math.round(ms)
}

/** `k=v` labels of `--label`. */
export const parseTargetLabels = (values: ReadonlyArray<string>): Record<string, string> => {
  const labels: Record<string, string> = {}
  for (const item of values) {
    const at = item.indexOf("=")
    if (at <= 0) throw new UsageError(`--label takes key=value, got "${item}"`)
    labels[item.slice(0, at)] = item.slice(at + 1)
  }
  return labels
}

type RunFlags = ServerFlags & {
  readonly peer?: Many
  readonly os?: string
  readonly distro?: string
  readonly label?: Many
  readonly all?: boolean
  readonly dryRun?: boolean
  readonly onlineOnly?: boolean
  readonly allowEmpty?: boolean
  readonly maxConcurrency?: string | number
  readonly maxErrors?: string | number
  readonly timeout?: string | number
  readonly jobTimeout?: string | number
  readonly name?: string
  readonly json?: boolean
  readonly wait?: boolean
  readonly follow?: boolean
  readonly "--"?: ReadonlyArray<string>
}

export const targetOf = (flags: RunFlags): RunTarget => {
  const peers = many(flags.peer)
  const labels = parseTargetLabels(many(flags.label))
  const target: RunTarget = {
    ...(peers.length > 0 ? { peers } : {}),
    ...(flags.os !== undefined ? { os: String(flags.os) } : {}),
    ...(flags.distro !== undefined ? { distro: String(flags.distro) } : {}),
    ...(Object.keys(labels).length > 0 ? { labels } : {}),
    ...(flags.all === true ? { all: true } : {}),
  }
  if (Object.keys(target).length === 0)
    throw new UsageError("say which peers: --peer <id>, --os, --distro, --label k=v, or --all")
  if (flags.all === true && Object.keys(target).length > 1)
    throw new UsageError("--all takes no other target flag (they would narrow it: leave --all out)")
  return target
}

const isDone = (info: RunInfo) =>
  (info.counts.pending ?? 0) + (info.counts.queued ?? 0) + (info.counts.delivered ?? 0) === 0

const total = (info: RunInfo) => Object.values(info.counts).reduce((a, b) => a + (b ?? 0), 0)

/** 0 all succeeded, 3 none reached, 1 anything else. */
export const exitCodeOf = (tickets: ReadonlyArray<{ readonly state: string }>): number => {
  if (tickets.length === 0 || tickets.every((t) => t.state === "undeliverable")) return EXIT_UNREACHED
  return tickets.every((t) => t.state === "succeeded") ? 0 : 1
}

const durationOf = (t: TicketView) => {
  const from = t.startedAt ?? t.deliveredAt
  const to = t.endedAt ?? t.finishedAt
  return from === null || to === null ? null : `${((to - from) / 1000).toFixed(2)}s`
}

const ticketJson = (t: TicketView) => ({
  ticket: t.ticket,
  run_id: t.runId,
  peer_id: t.peerId,
  state: t.state,
  exit_code: t.exitCode,
  output: t.output,
  close_reason: t.closeReason,
  attempts: t.attempts,
  created_at: t.createdAt,
  delivered_at: t.deliveredAt,
  finished_at: t.finishedAt,
})

const summaryOf = (info: RunInfo, skipped: number) => ({
  run_id: info.runId,
  total: total(info),
  succeeded: info.counts.succeeded ?? 0,
  failed: info.counts.failed ?? 0,
  timed_out: info.counts.timed_out ?? 0,
  cancelled: info.counts.cancelled ?? 0,
  undeliverable: info.counts.undeliverable ?? 0,
  pending: (info.counts.pending ?? 0) + (info.counts.queued ?? 0),
  running: info.counts.delivered ?? 0,
  offline: info.offline,
  skipped,
})

const progressLine = (info: RunInfo) => {
  const s = summaryOf(info, 0)
  const done = s.total - s.pending - s.running
  return `${info.runId}: ${done}/${s.total} done, ${s.succeeded} succeeded, ${s.failed} failed, ${s.timed_out} timed out, ${s.pending} pending, ${s.offline} offline`
}

/** One row per peer; with many peers, identical outcomes grouped with a count. */
const printTable = (tickets: ReadonlyArray<TicketView>) => {
  if (tickets.length <= 10) {
    printRows(
      tickets.map((t) => ({
        peer: t.peerId,
        state: t.state,
        exit: t.exitCode,
        duration: durationOf(t),
        output: t.output ?? t.closeReason,
      })),
      false,
    )
    return
  }
  const groups = new Map<
    string,
    { state: string; exit: number | null; output: string | null; peers: Array<string> }
  >()
  for (const t of tickets) {
    const output = t.output ?? t.closeReason
    const key = JSON.stringify([t.state, t.exitCode, output])
    const group = groups.get(key) ?? { state: t.state, exit: t.exitCode, output, peers: [] }
    group.peers.push(t.peerId)
    groups.set(key, group)
  }
  printRows(
    [...groups.values()]
      .sort((a, b) => b.peers.length - a.peers.length)
      .map((g) => ({
        count: g.peers.length,
        state: g.state,
        exit: g.exit,
        output: g.output,
        peers: g.peers.length > 3 ? `${g.peers.slice(0, 3).join(", ")}, ...` : g.peers.join(", "),
      })),
    false,
  )
}

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
  const command = (flags["--"] ?? []).length > 0 ? (flags["--"] ?? []).join(" ") : words.join(" ")
  if (command.trim() === "") throw new UsageError("give the command after --: picus run --all -- uptime")
  const jobTimeoutMs = parseDuration("--job-timeout", flags.jobTimeout, 30_000)
  const spec = {
    target: targetOf(flags),
    name: flags.name === undefined ? command.slice(0, 64) : String(flags.name),
    command,
    timeoutMs: jobTimeoutMs,
    deliverWithinMs: parseDuration("--timeout", flags.timeout, 10 * 60_000),
    createdBy: `cli:${process.env.USER ?? "operator"}`,
    ...(flags.maxConcurrency === undefined
      ? {}
      : { maxConcurrency: parseAmount("--max-concurrency", flags.maxConcurrency)! }),
    ...(flags.maxErrors === undefined ? {} : { maxErrors: parseAmount("--max-errors", flags.maxErrors)! }),
    onlineOnly: flags.onlineOnly === true,
    dryRun: flags.dryRun === true,
    allowEmpty: flags.allowEmpty === true,
  }
  const json = flags.json === true
  const config = resolveServerConfig(flags)
  return withExistingStore(
    config,
    Effect.gen(function* () {
      const created = yield* startRun(spec)
      if (spec.dryRun) {
        printRows(
          created.peers.map((p) => ({
            peer: p.peerId,
            os: p.os,
            distro: p.distro,
            online: p.online,
            labels: Object.entries(p.labels)
              .map(([k, v]) => `${k}=${v}`)
              .join(","),
          })),
          json,
        )
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
  sharedOptions(
    cli.command(
      "run [...words]",
      "Run a command on many peers: picus run [target] -- <command>; picus run show <id>",
    ),
  )
    .option("--peer <id>", "A peer to reach (repeatable)")
    .option("--os <os>", "Peers of this os (linux, darwin...)")
    .option("--distro <distro>", "Peers of this distro (debian, alpine...)")
    .option("--label <key=value>", "Peers with this label (repeatable: all must match)")
    .option("--all", "Every peer")
    .option("--dry-run", "List the peers it would reach, and send nothing")
    .option("--online-only", "Skip the peers that are offline now (default: they get it at their next login)")
    .option("--allow-empty", "A target matching no peer is not an error")
    .option("--max-concurrency <n|p%>", "At most this many of its tickets at once (default all)")
    .option(
      "--max-errors <n|p%>",
      "Once more than this many failed or timed out, send no more (default no limit)",
    )
    .option(
      "--timeout <duration>",
      "The run's delivery deadline: tickets not sent by then end undeliverable",
      {
        default: "10m",
      },
    )
    .option("--job-timeout <duration>", "Each command's timeout on its peer", { default: "30s" })
    .option("--name <name>", "A name for the run (default: the command)")
    .option("--no-wait", "Print the run id and return at once")
    .option("--follow", "Print the jobs' output as it comes, each line prefixed with its peer")
    .option("--json", "One JSON object per ticket as each ends, then a summary")
    .example("picus run --distro debian --max-concurrency 10% --max-errors 1 -- apt-get -s upgrade")
    .example("picus run show r1000")
    .action((words: ReadonlyArray<string>, flags: RunFlags) => {
      const given = words.map(String)
      if (given[0] === "show" && (flags["--"] ?? []).length === 0) {
        if (given[1] === undefined) return run(Effect.fail(new UsageError("picus run show <run id>")))
        return run(showRun(flags, given[1]))
      }
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
