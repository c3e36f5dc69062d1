/**
 * What `picus run` shares between its two ways of working (PostgreSQL and Redis directly, or a
 * server's HTTP API): its flags, what they mean, and how a run is shown. Loads neither the stores
 * nor Redis, so that the API's way starts small.
 */
import { type RunAmount, type RunInfo, type RunTarget, type TicketView, UsageError } from "@picus/core"
import type { CAC, Command } from "cac"
import type { ServerFlags } from "server"
import { sharedOptions } from "server/flags"
import { printRows } from "server/report"

/** Exit code of a run that reached no peer (all undeliverable or skipped, or none matched). */
export const EXIT_UNREACHED = 3

export type Many = string | number | ReadonlyArray<string | number> | undefined
export const many = (value: Many): ReadonlyArray<string> =>
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

export type RunFlags = ServerFlags & {
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
  readonly apiUrl?: string
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

export const isDone = (info: RunInfo) =>
  (info.counts.pending ?? 0) + (info.counts.queued ?? 0) + (info.counts.delivered ?? 0) === 0

export const total = (info: RunInfo) => Object.values(info.counts).reduce((a, b) => a + (b ?? 0), 0)

/** 0 all succeeded, 3 none reached, 1 anything else. */
export const exitCodeOf = (tickets: ReadonlyArray<{ readonly state: string }>): number => {
  if (tickets.length === 0 || tickets.every((t) => t.state === "undeliverable")) return EXIT_UNREACHED
  return tickets.every((t) => t.state === "succeeded") ? 0 : 1
}

export const durationOf = (t: TicketView) => {
  const from = t.startedAt ?? t.deliveredAt
  const to = t.endedAt ?? t.finishedAt
  return from === null || to === null ? null : `${((to - from) / 1000).toFixed(2)}s`
}

export const ticketJson = (t: TicketView) => ({
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

export const summaryOf = (info: RunInfo, skipped: number) => ({
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

export const progressLine = (info: RunInfo) => {
  const s = summaryOf(info, 0)
  const done = s.total - s.pending - s.running
  return `${info.runId}: ${done}/${s.total} done, ${s.succeeded} succeeded, ${s.failed} failed, ${s.timed_out} timed out, ${s.pending} pending, ${s.offline} offline`
}

/** One row per peer; with many peers, identical outcomes grouped with a count. */
export const printTable = (tickets: ReadonlyArray<TicketView>) => {
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

/** `picus run` with its flags, for both of its ways. */
export const defineRun = (cli: CAC): Command =>
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
    .option(
      "--api-url <url>",
      "Go through a server's HTTP API (its --http) instead of PostgreSQL and Redis (env PICUS_API_URL; token in PICUS_API_TOKEN)",
    )
    .example("picus run --distro debian --max-concurrency 10% --max-errors 1 -- apt-get -s upgrade")
    .example("PICUS_API_URL=http://127.0.0.1:8080 PICUS_API_TOKEN=... picus run --all -- uptime")
    .example("picus run show r1000")

/** The command line's words after `--` (or the words themselves). */
export const commandOf = (flags: RunFlags, words: ReadonlyArray<string>): string => {
  const command = (flags["--"] ?? []).length > 0 ? (flags["--"] ?? []).join(" ") : words.join(" ")
  if (command.trim() === "") throw new UsageError("give the command after --: picus run --all -- uptime")
  return command
}

/** The API to go through, if any: `--api-url`, else PICUS_API_URL. */
export const apiUrlOf = (flags: { readonly apiUrl?: string }): string | undefined => {
  const url = flags.apiUrl ?? process.env.PICUS_API_URL
  return url === undefined || url.trim() === "" ? undefined : url.trim()
}

/** The run the flags ask for, as `startRun` takes it. */
export const runSpecOf = (flags: RunFlags, words: ReadonlyArray<string>) => {
  const command = commandOf(flags, words)
  const jobTimeoutMs = parseDuration("--job-timeout", flags.jobTimeout, 30_000)
  return {
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
}

/** Labels as `k=v,k=v`, for a table. */
export const labelsText = (labels: Readonly<Record<string, string>>): string =>
  Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(",")

/** The rows of a dry run. */
export const dryRunRows = (
  peers: ReadonlyArray<{
    readonly peerId: string
    readonly os: string | null
    readonly distro: string | null
    readonly online: boolean
    readonly labels: Readonly<Record<string, string>>
  }>,
) =>
  peers.map((p) => ({
    peer: p.peerId,
    os: p.os,
    distro: p.distro,
    online: p.online,
    labels: labelsText(p.labels),
  }))
