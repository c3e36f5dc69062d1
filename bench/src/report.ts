import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { cpus, hostname } from "node:os"
import { join } from "node:path"
import { type CostCounts, type CostPerTicket, costPerTicket } from "./counts.ts"
import type { FanoutMedians, FanoutResult, FanoutRun } from "./fanout.ts"
import type { FootprintResult } from "./footprint.ts"
import type { RealPeersResult } from "./realPeers.ts"
import { spread } from "./stats.ts"
import type { StormResult } from "./storm.ts"
import type { RunResult } from "./system.ts"

/** One measured run as main.ts records it. */
export interface RunRecord extends RunResult {
  /** 1-based repeat number. */
  readonly repeat: number
  /** "saturation", or "rate <R>/s" for a fixed-rate run. */
  readonly phase: string
  /**
   * Mean busy cores during the run (the whole machine, and this process), and the machine's 1-minute
   * load average when the run started: a busy machine shows up here.
   */
  readonly cpu?: {
    readonly machineCores: number
    readonly benchProcessCores: number
    readonly loadAvg1: number
  }
  /** What the run cost over its measured window, raw (counts.ts). */
  readonly cost?: CostCounts
}

export interface RunFailure {
  readonly system: string
  readonly phase: string
  readonly repeat: number
  readonly error: string
}

export interface Machine {
  readonly date: string
  readonly hostname: string
  readonly cpuModel: string
  readonly cores: number
  readonly node: string
  readonly platform: string
}

export const describeMachine = (): Machine => {
  let cpuModel = cpus()[0]?.model ?? "unknown"
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync("/proc/cpuinfo", "utf8"))
    if (m?.[1] !== undefined) cpuModel = m[1].trim()
  } catch {
    // not Linux: keep os.cpus()'s
  }
  return {
    date: new Date().toISOString(),
    hostname: hostname(),
    cpuModel,
    cores: cpus().length,
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  }
}

/** Median and spread over the repeats of one system in one phase. */
export interface GroupSummary {
  readonly system: string
  readonly phase: string
  readonly targetRate?: number
  readonly runs: number
  readonly tickets: number
  readonly errors: number
  readonly throughput: ReturnType<typeof spread>
  readonly p50: ReturnType<typeof spread>
  readonly p95: ReturnType<typeof spread>
  readonly p99: ReturnType<typeof spread>
  readonly max: ReturnType<typeof spread>
  readonly machineCores?: number
  readonly loadAvg1?: number
  /** Medians over the repeats of each per-ticket cost. */
  readonly costPerTicket?: CostPerTicket
}

/** Field by field, the median of the runs' per-ticket costs (a field some runs lack: of those that have it). */
const medianCost = (costs: ReadonlyArray<CostPerTicket>): CostPerTicket | undefined => {
  if (costs.length === 0) return undefined
  const keys = [...new Set(costs.flatMap((c) => Object.keys(c)))] as Array<keyof CostPerTicket>
  const out: Partial<Record<keyof CostPerTicket, number>> = {}
  for (const k of keys) {
    const xs = costs.flatMap((c) => (c[k] === undefined ? [] : [c[k]]))
    if (xs.length > 0) out[k] = spread(xs).median
  }
  return out as CostPerTicket
}

export const summarize = (runs: ReadonlyArray<RunRecord>): GroupSummary[] => {
  const groups = new Map<string, RunRecord[]>()
  for (const r of runs) {
    const key = `${r.system}\u0000${r.phase}`
    const g = groups.get(key)
    if (g === undefined) groups.set(key, [r])
    else g.push(r)
  }
  return [...groups.values()].map((g) => {
    const first = g[0]!
    const cores = g.flatMap((r) => (r.cpu === undefined ? [] : [r.cpu.machineCores]))
    const loads = g.flatMap((r) => (r.cpu === undefined ? [] : [r.cpu.loadAvg1]))
    const cost = medianCost(
      g.flatMap((r) => (r.cost === undefined ? [] : [costPerTicket(r.tickets, r.cost)])),
    )
    return {
      system: first.system,
      phase: first.phase,
      ...(first.targetRate === undefined ? {} : { targetRate: first.targetRate }),
      runs: g.length,
      tickets: g.reduce((a, r) => a + r.tickets, 0),
      errors: g.reduce((a, r) => a + r.errors, 0),
      throughput: spread(g.map((r) => r.throughput)),
      p50: spread(g.map((r) => r.latencyMs.p50)),
      p95: spread(g.map((r) => r.latencyMs.p95)),
      p99: spread(g.map((r) => r.latencyMs.p99)),
      max: spread(g.map((r) => r.latencyMs.max)),
      ...(cores.length === 0 ? {} : { machineCores: spread(cores).median }),
      ...(loads.length === 0 ? {} : { loadAvg1: spread(loads).median }),
      ...(cost === undefined ? {} : { costPerTicket: cost }),
    }
  })
}

const fmtRate = (x: number): string => (Number.isFinite(x) ? Math.round(x).toLocaleString("en-US") : "-")
const fmtMs = (x: number): string =>
  !Number.isFinite(x)
    ? "-"
    : x >= 100
      ? Math.round(x).toLocaleString("en-US")
      : x >= 10
        ? x.toFixed(1)
        : x.toFixed(2)
const fmtRatio = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(2)}x` : "-")
const withRange = (s: ReturnType<typeof spread>, f: (x: number) => string): string =>
  s.n > 1 ? `${f(s.median)} (${f(s.min)}–${f(s.max)})` : f(s.median)

const phaseOrder = (phase: string): number =>
  phase === "saturation" ? -1 : Number(/\d+/.exec(phase)?.[0] ?? 0)

export interface ReportInput {
  readonly machine: Machine
  readonly options: Record<string, unknown>
  readonly systems: ReadonlyArray<string>
  readonly runs: ReadonlyArray<RunRecord>
  readonly failures: ReadonlyArray<RunFailure>
  /** The registration storm, one row per number of server instances (absent when not run). */
  readonly storms?: ReadonlyArray<StormResult>
  /** Real peer processes against simulated ones on one server (absent when not run). */
  readonly realPeers?: ReadonlyArray<RealPeersResult>
  /** The fan-out phase (absent when not run). */
  readonly fanout?: FanoutResult
  readonly footprint?: FootprintResult
  readonly wallMs: number
}

const summaryMarkdown = (input: ReportInput, groups: ReadonlyArray<GroupSummary>): string => {
  const { machine } = input
  const lines: string[] = []
  lines.push("# Benchmark", "")
  lines.push(
    `${machine.date} on ${machine.hostname}: ${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node} ` +
      `(${machine.platform}). Whole run: ${(input.wallMs / 60_000).toFixed(1)} min.`,
    "",
  )
  lines.push(`Options: \`${JSON.stringify(input.options)}\``, "")
  lines.push(
    "Throughput = tickets / (first ticket created → last result committed). Latency = commit − creation " +
      "per ticket (wall clock). Cells: median over repeats (min–max). Machine cores = mean busy cores of " +
      "the whole machine over the run's measured window (its set-up, such as logins, not counted); load = 1-minute load average at its start (a busy machine " +
      "shows up in both).",
    "",
  )
  const bySystem = (a: GroupSummary, b: GroupSummary): number =>
    input.systems.indexOf(a.system) - input.systems.indexOf(b.system)

  const sat = groups.filter((g) => g.phase === "saturation").sort(bySystem)
  if (sat.length > 0) {
    lines.push("## Saturation", "")
    lines.push("| system | runs | tickets/s | p50 ms | p99 ms | errors | machine cores | load |")
    lines.push("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (const g of sat) {
      lines.push(
        `| ${g.system} | ${g.runs} | ${withRange(g.throughput, fmtRate)} | ${withRange(g.p50, fmtMs)} | ` +
          `${withRange(g.p99, fmtMs)} | ${g.errors} | ${g.machineCores?.toFixed(2) ?? "-"} | ` +
          `${g.loadAvg1?.toFixed(1) ?? "-"} |`,
      )
    }
    lines.push("")
  }

  const rate = groups.filter((g) => g.phase !== "saturation")
  if (rate.length > 0) {
    lines.push("## Fixed rate", "")
    lines.push(
      "| system | target /s | achieved /s | p50 ms | p95 ms | p99 ms | max ms | errors | machine cores | load |",
    )
    lines.push("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    const sorted = [...rate].sort((a, b) => phaseOrder(a.phase) - phaseOrder(b.phase) || bySystem(a, b))
    for (const g of sorted) {
      lines.push(
        `| ${g.system} | ${fmtRate(g.targetRate ?? Number.NaN)} | ${withRange(g.throughput, fmtRate)} | ` +
          `${withRange(g.p50, fmtMs)} | ${withRange(g.p95, fmtMs)} | ${withRange(g.p99, fmtMs)} | ` +
          `${withRange(g.max, fmtMs)} | ${g.errors} | ${g.machineCores?.toFixed(2) ?? "-"} | ` +
          `${g.loadAvg1?.toFixed(1) ?? "-"} |`,
      )
    }
    lines.push("")
  }

  const ours = input.systems.filter((s) => s.startsWith("picus-"))
  const refs = ["bullmq-batched", "streams-ceiling"].filter((s) => input.systems.includes(s))
  if (ours.length > 0 && refs.length > 0) {
    const find = (system: string, phase: string) =>
      groups.find((g) => g.system === system && g.phase === phase)
    const fixedPhases = [...new Set(rate.map((g) => g.phase))].filter((p) =>
      refs.every((r) => find(r, p) !== undefined),
    )
    lines.push("## Ratios (ours / reference, of medians)", "")
    lines.push(
      "Throughput: higher is better for us. Latency: lower is better for us. Only phases run at the same " +
        "rate by both sides are compared.",
      "",
    )
    lines.push(`| system | metric | ${refs.map((r) => `ours / ${r}`).join(" | ")} |`)
    lines.push(`|---|---|${refs.map(() => "---:").join("|")}|`)
    for (const o of ours) {
      const row = (metric: string, phase: string, pick: (g: GroupSummary) => number): void => {
        const mine = find(o, phase)
        if (mine === undefined) return
        const cells = refs.map((r) => {
          const ref = find(r, phase)
          return ref === undefined ? "-" : fmtRatio(pick(mine) / pick(ref))
        })
        lines.push(`| ${o} | ${metric} | ${cells.join(" | ")} |`)
      }
      row("saturation tickets/s", "saturation", (g) => g.throughput.median)
      for (const p of fixedPhases) {
        row(`p50 at ${p.replace("rate ", "")}`, p, (g) => g.p50.median)
        row(`p99 at ${p.replace("rate ", "")}`, p, (g) => g.p99.median)
      }
    }
    lines.push("")
  }

  const costed = groups.filter((g) => g.costPerTicket !== undefined)
  if (costed.length > 0) {
    lines.push("## Cost per ticket", "")
    lines.push(
      "Counted over each run's measured window (first ticket submitted → last result committed), divided " +
        "by its tickets; medians over repeats. CPU in ms: server = the picus server processes; bench = " +
        "this process (the baselines' workers and producer; picus's simulated peers and submitter); " +
        "Redis = the Redis server (INFO cpu); PG = the PostgreSQL backends of the run's database; " +
        "machine = every process on the machine, anyone's. PG statements are round trips (a statement, " +
        "and the begin and commit of an explicit transaction), counted in the pools: the servers' (SIGUSR2) " +
        "and this process's. PG transactions and tuples: pg_stat_database of the run's database, the " +
        "bench's own reads taken out, read once every backend has published them (the baselines' " +
        "connections are made to; for picus the bench waits 10.5 s at each edge: what its servers were " +
        "counted sending in the second wait is taken out of the transactions, the rows it wrote, lease " +
        "renewals, stay in the tuples). Redis commands and bytes: INFO commandstats and stats (the Redis " +
        "is assumed to serve nothing else meanwhile), commands run by Lua scripts included (Redis counts " +
        "them too; the scripts' own calls in parentheses). Loopback: bytes over `lo` (PostgreSQL, Redis and " +
        "anything else local). Per command and per table: report.json.",
      "",
    )
    lines.push(
      "| system | phase | server CPU | bench CPU | Redis CPU | PG CPU | machine CPU | PG stmts server | " +
        "PG stmts bench | PG xacts | tuples ins | tuples upd | Redis cmds (scripts) | Redis in B | Redis out B | loopback B |",
    )
    lines.push("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    const sorted = [...costed].sort((a, b) => phaseOrder(a.phase) - phaseOrder(b.phase) || bySystem(a, b))
    const f = (x: number | undefined, digits: number): string =>
      x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits)
    const b = (x: number | undefined): string =>
      x === undefined || !Number.isFinite(x) ? "-" : Math.round(x).toLocaleString("en-US")
    for (const g of sorted) {
      const c = g.costPerTicket!
      lines.push(
        `| ${g.system} | ${g.phase} | ${f(c.serverCpuMs, 3)} | ${f(c.benchCpuMs, 3)} | ${f(c.redisCpuMs, 3)} | ` +
          `${f(c.pgCpuMs, 3)} | ${f(c.machineCpuMs, 3)} | ${f(c.pgServerStatements, 2)} | ` +
          `${f(c.pgBenchStatements, 2)} | ${f(c.pgTransactions, 2)} | ${f(c.tuplesInserted, 2)} | ` +
          `${f(c.tuplesUpdated, 2)} | ${f(c.redisCommands, 2)} (${f(c.redisScripts, 2)}) | ${b(c.redisInBytes)} | ${b(c.redisOutBytes)} | ` +
          `${b(c.loopbackBytes)} |`,
      )
    }
    lines.push("")
  }

  const fmtNum = (x: number | undefined, digits = 0): string =>
    x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(digits)
  const fmtMiB = (bytes: number | undefined): string => (bytes === undefined ? "-" : fmtNum(bytes / 2 ** 20))
  // The first line of an error, safe in a table cell.
  const errorCell = (error: string | undefined): string =>
    error === undefined ? "" : (error.split("\n")[0] ?? "").replace(/\|/g, "\\|")

  if (input.storms !== undefined && input.storms.length > 0) {
    lines.push("## Registration storm", "")
    lines.push(
      "Simulated peers all registering at once (no catalog jobs), then idling while they heartbeat. " +
        "All accepted = from the fleet's start until every peer was accepted once; open sessions = " +
        "sessions open in PostgreSQL then (must equal the peers). Register p50/p99 = registration " +
        "sent → acceptance read. Server cores = mean over all instances summed, during the storm and " +
        "the idle window; machine cores = the whole machine during the storm (the simulated fleet runs in the bench process), load = 1-minute load average at the start; RSS = peak of their sum. Expired / rejected / registered again = during " +
        "the idle window: 0 for a healthy run. Run once, not repeated.",
      "",
    )
    lines.push(
      "| instances | peers | all accepted s | open sessions | register p50 ms | register p99 ms | " +
        "resent in storm | storm cores | machine cores | load | idle s | idle cores | heartbeats/s | peak RSS MiB | " +
        "expired | rejected | registered again | error |",
    )
    lines.push("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (const r of input.storms) {
      lines.push(
        `| ${r.instances} | ${r.peers} | ${fmtNum(r.allAcceptedMs === undefined ? undefined : r.allAcceptedMs / 1000, 2)} | ` +
          `${fmtNum(r.openSessions)} | ${fmtNum(r.registerP50Ms)} | ${fmtNum(r.registerP99Ms)} | ` +
          `${fmtNum(r.stormResent)} | ${fmtNum(r.stormServerCores, 2)} | ${fmtNum(r.stormMachineCores, 2)} | ` +
          `${fmtNum(r.loadAvg1, 1)} | ${fmtNum(r.idleMs / 1000)} | ` +
          `${fmtNum(r.idleServerCores, 2)} | ${fmtNum(r.heartbeatsPerSecond)} | ${fmtMiB(r.serverRssPeakBytes)} | ` +
          `${fmtNum(r.idleExpired)} | ${fmtNum(r.idleRejected)} | ${fmtNum(r.idleReregistered)} | ` +
          `${errorCell(r.error)} |`,
      )
    }
    lines.push("")
  }

  if (input.realPeers !== undefined && input.realPeers.length > 0) {
    lines.push("## Real peers", "")
    lines.push(
      "One server; real peer processes running the shell command `true` per ticket, against as many " +
        "simulated peers answering at once. Same submission (one batch per peer) and timings from " +
        "PostgreSQL as the saturation runs. The spawn baseline, in the same run: as many Node processes " +
        "spawning `sh -c true` the way the peer's executor does, as many at once each, for as many jobs " +
        "(no server, no messages): what spawning alone allows on this machine. Peer cores: the real " +
        "peer (or baseline) processes with their shells (utime+stime+cutime+cstime), and the processes' " +
        "own share of it (utime+stime); for the simulated peers, the bench process, which also submits. " +
        "Run once, not repeated.",
      "",
    )
    lines.push(
      "| peers | kind | concurrency | tickets | tickets/s | ÷ spawn baseline | p50 ms | p99 ms | server cores | " +
        "peer cores | peer CPU ms/ticket | of which own | machine cores | load | error |",
    )
    lines.push("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (const r of input.realPeers) {
      lines.push(
        `| ${r.peers} | ${r.kind} | ${fmtNum(r.concurrency)} | ${r.tickets} | ${fmtRate(r.throughput ?? Number.NaN)} | ` +
          `${fmtRatio(r.vsSpawnBaseline ?? Number.NaN)} | ` +
          `${fmtMs(r.latencyMs?.p50 ?? Number.NaN)} | ${fmtMs(r.latencyMs?.p99 ?? Number.NaN)} | ` +
          `${fmtNum(r.serverCores, 2)} | ${fmtNum(r.peerCores, 2)} | ${fmtNum(r.peerCpuMsPerTicket, 2)} | ` +
          `${fmtNum(r.peerOwnCpuMsPerTicket, 2)} | ${fmtNum(r.machineCores, 2)} | ${fmtNum(r.loadAvg1, 1)} | ` +
          `${errorCell(r.error)} |`,
      )
    }
    lines.push("")
  }

  if (input.fanout !== undefined) {
    const f = input.fanout
    lines.push("## Fan-out", "")
    lines.push(
      `One server and ${f.peers} real peers (each run as \`./picus peer\` runs it); ` +
        "`./picus run --all -- echo hi` from the command to its exit (it waits for every result), " +
        "first through the server's HTTP API (`PICUS_API_URL`, as from an operator's machine), then " +
        "to PostgreSQL and Redis directly, each after warm-up runs not counted (the peers and the " +
        "server are long-lived: their first jobs pay for compiling their code, shown on the rows " +
        "`first` and `warm-up`, the median of those runs). Machine CPU: every " +
        "process on the machine meanwhile (the command, the server, the peers and their shells, " +
        "PostgreSQL, Redis, and whatever else the machine ran); own CPU: the command, the server and " +
        "the peers with their shells alone, from /proc; background: the machine's cores busy in the " +
        "0.5 s before each command (none of this system's work, e.g. other processes of the machine). " +
        "Reference from the issue, same kind of machine: Salt 3006 with 20 minions, " +
        "`salt '*' cmd.run 'echo hi'`, 1.9 s and 3.5 CPU-seconds.",
      "",
    )
    if (f.error !== undefined) lines.push(`Failed: ${f.error}`, "")
    else {
      lines.push(
        "| run | via | wall s | machine CPU s | background cores | own CPU s | command | server | peers |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
      )
      const row = (label: string, r: FanoutRun) =>
        lines.push(
          `| ${label} | ${r.mode ?? "direct"} | ${fmtNum(r.wallMs / 1000, 3)} | ${fmtNum(r.machineCpuS, 2)} | ` +
            `${fmtNum(r.backgroundCores, 2)} | ${fmtNum(r.ownCpuS, 2)} | ` +
            `${fmtNum(r.split.command, 2)} | ${fmtNum(r.split.server, 2)} | ${fmtNum(r.split.peers, 2)} |`,
        )
      const medianRow = (label: string, mode: string, m: FanoutMedians) =>
        lines.push(
          `| ${label} | ${mode} | ${fmtNum(m.wallMs / 1000, 3)} | ${fmtNum(m.machineCpuS, 2)} | | ` +
            `${fmtNum(m.ownCpuS, 2)} | ${fmtNum(m.command, 2)} | ${fmtNum(m.server, 2)} | ${fmtNum(m.peers, 2)} |`,
        )
      let counted = 0
      for (const mode of ["api", "direct"] as const) {
        const first = f.runs.find((r) => r.mode === mode && r.warmup === true)
        if (first !== undefined) row("first", first)
        const warm = f.warmupMedians?.[mode]
        if (warm !== undefined && (f.warmupRuns ?? 0) > 1) medianRow(`warm-up (${f.warmupRuns})`, mode, warm)
        for (const r of f.runs.filter((r) => (r.mode ?? "direct") === mode && r.warmup !== true))
          row(`${++counted}`, r)
      }
      for (const mode of ["api", "direct"] as const) {
        const m = f.medians?.[mode]
        if (m !== undefined) medianRow("median", mode, m)
      }
      lines.push("")
    }
  }

  if (input.footprint !== undefined) {
    const f = input.footprint
    lines.push("## Footprint of an idle peer", "")
    lines.push(
      `One peer on one server, heartbeats only, measured ${fmtNum(f.idleMs / 1000, 0)} s after it registered ` +
        "and settled 5 s: VmRSS of /proc/<pid>/status, Pss of /proc/<pid>/smaps_rollup, and utime + stime of " +
        "/proc/<pid>/stat read that far apart (any ps or top shows the same). Packaged: the single executable " +
        "of `./picus package`, started from disk (dropped from the page cache first, as after a boot); source: " +
        "`node packages/peer/src/main.ts`. Target: at most 60 MiB RSS and " +
        "0.001 cores, registered within a second. Reference from the issue, same kind of machine: a Salt " +
        "3006 minion, about 58 MiB and 0.001 cores.",
      "",
    )
    if (f.error !== undefined) lines.push(`Failed: ${f.error}`, "")
    else {
      lines.push(
        "| peer | RSS MiB | PSS MiB | peak RSS MiB | cores | --version ms | registered ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
      )
      const mib = (b: number | undefined) => fmtNum((b ?? Number.NaN) / 2 ** 20, 1)
      for (const r of f.rows)
        lines.push(
          r.error !== undefined
            ? `| ${r.kind} | ${errorCell(r.error)} | | | | | |`
            : `| ${r.kind} | ${mib(r.rssBytes)} | ${mib(r.pssBytes)} | ${mib(r.rssPeakBytes)} | ` +
                `${fmtNum(r.cores, 4)} | ${fmtNum(r.versionMs, 0)} | ${fmtNum(r.registeredMs, 0)} |`,
        )
      lines.push("")
    }
  }

  if (input.failures.length > 0) {
    lines.push("## Failed runs", "")
    for (const f of input.failures) lines.push(`- ${f.system}, ${f.phase}, repeat ${f.repeat}: ${f.error}`)
    lines.push("")
  }
  lines.push("Plot: [latency.svg](latency.svg). Every run: [report.json](report.json).", "")
  return lines.join("\n")
}

const palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

const niceCeil = (x: number): number => {
  if (!(x > 0)) return 1
  const e = 10 ** Math.floor(Math.log10(x))
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * e >= x) return m * e
  return 10 * e
}

/** p50 and p99 latency (log scale) against throughput, one colour per system, medians over repeats. */
export const latencySvg = (input: ReportInput, groups: ReadonlyArray<GroupSummary>): string => {
  const W = 900
  const H = 560
  const m = { left: 80, right: 200, top: 50, bottom: 60 }
  const pw = W - m.left - m.right
  const ph = H - m.top - m.bottom
  const pts = groups.filter((g) => Number.isFinite(g.throughput.median))
  const lat = pts.flatMap((g) => [g.p50.median, g.p99.median]).filter((x) => x > 0 && Number.isFinite(x))
  const xMax = niceCeil(Math.max(1, ...pts.map((g) => g.throughput.median)) * 1.05)
  const yLo = 10 ** Math.floor(Math.log10(Math.min(...lat, 1)))
  const yHi = 10 ** Math.ceil(Math.log10(Math.max(...lat, 10)))
  const x = (v: number): number => m.left + (v / xMax) * pw
  const y = (v: number): number =>
    m.top + ph - ((Math.log10(Math.max(v, yLo)) - Math.log10(yLo)) / (Math.log10(yHi) - Math.log10(yLo))) * ph
  const out: string[] = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" ` +
      `font-family="sans-serif" font-size="12">`,
    "<title>Latency (p50, p99) against throughput, per system</title>",
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${m.left}" y="22" font-size="15" font-weight="bold">Latency vs throughput</text>`,
    `<text x="${m.left}" y="40" fill="#555">${esc(
      `${input.machine.date.slice(0, 16).replace("T", " ")} · ${input.machine.hostname} · ${input.machine.cpuModel} · ` +
        `${input.machine.cores} cores · Node ${input.machine.node} · medians over repeats`,
    )}</text>`,
  )
  // Grid and axes.
  for (let i = 0; i <= 5; i++) {
    const v = (xMax * i) / 5
    out.push(
      `<line x1="${x(v)}" y1="${m.top}" x2="${x(v)}" y2="${m.top + ph}" stroke="#eee"/>`,
      `<text x="${x(v)}" y="${m.top + ph + 18}" text-anchor="middle">${fmtRate(v)}</text>`,
    )
  }
  for (let d = yLo; d <= yHi * 1.0001; d *= 10) {
    for (const k of [1, 2, 5]) {
      const v = d * k
      if (v > yHi * 1.0001) break
      out.push(
        `<line x1="${m.left}" y1="${y(v)}" x2="${m.left + pw}" y2="${y(v)}" stroke="${k === 1 ? "#ddd" : "#f3f3f3"}"/>`,
        `<text x="${m.left - 6}" y="${y(v) + 4}" text-anchor="end" fill="${k === 1 ? "#000" : "#888"}">${v >= 1 ? v : v.toPrecision(1)}</text>`,
      )
    }
  }
  out.push(
    `<line x1="${m.left}" y1="${m.top + ph}" x2="${m.left + pw}" y2="${m.top + ph}" stroke="black"/>`,
    `<line x1="${m.left}" y1="${m.top}" x2="${m.left}" y2="${m.top + ph}" stroke="black"/>`,
    `<text x="${m.left + pw / 2}" y="${H - 18}" text-anchor="middle">throughput (tickets/s)</text>`,
    `<text transform="translate(20 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">latency (ms, log scale)</text>`,
  )
  // Series.
  input.systems.forEach((system, i) => {
    const color = palette[i % palette.length]!
    const g = pts.filter((p) => p.system === system).sort((a, b) => a.throughput.median - b.throughput.median)
    if (g.length === 0) return
    const line = (pick: (p: GroupSummary) => number, dash: string): string =>
      `<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${g
        .map((p) => `${x(p.throughput.median).toFixed(1)},${y(pick(p)).toFixed(1)}`)
        .join(" ")}"/>`
    out.push(
      line((p) => p.p50.median, ""),
      line((p) => p.p99.median, ' stroke-dasharray="6 4"'),
    )
    for (const p of g) {
      const px = x(p.throughput.median)
      out.push(
        `<circle cx="${px.toFixed(1)}" cy="${y(p.p50.median).toFixed(1)}" r="4" fill="${color}"><title>${esc(
          `${system} ${p.phase}: p50 ${fmtMs(p.p50.median)} ms at ${fmtRate(p.throughput.median)}/s`,
        )}</title></circle>`,
        `<rect x="${(px - 4).toFixed(1)}" y="${(y(p.p99.median) - 4).toFixed(1)}" width="8" height="8" fill="white" ` +
          `stroke="${color}" stroke-width="2"><title>${esc(
            `${system} ${p.phase}: p99 ${fmtMs(p.p99.median)} ms at ${fmtRate(p.throughput.median)}/s`,
          )}</title></rect>`,
      )
    }
    const ly = m.top + 10 + i * 20
    const lx = m.left + pw + 20
    out.push(
      `<line x1="${lx}" y1="${ly}" x2="${lx + 24}" y2="${ly}" stroke="${color}" stroke-width="3"/>`,
      `<text x="${lx + 30}" y="${ly + 4}">${esc(system)}</text>`,
    )
  })
  const ky = m.top + 20 + input.systems.length * 20
  const kx = m.left + pw + 20
  out.push(
    `<line x1="${kx}" y1="${ky}" x2="${kx + 24}" y2="${ky}" stroke="#333" stroke-width="2"/>`,
    `<circle cx="${kx + 12}" cy="${ky}" r="4" fill="#333"/>`,
    `<text x="${kx + 30}" y="${ky + 4}">p50</text>`,
    `<line x1="${kx}" y1="${ky + 20}" x2="${kx + 24}" y2="${ky + 20}" stroke="#333" stroke-width="2" stroke-dasharray="6 4"/>`,
    `<rect x="${kx + 8}" y="${ky + 16}" width="8" height="8" fill="white" stroke="#333" stroke-width="2"/>`,
    `<text x="${kx + 30}" y="${ky + 24}">p99</text>`,
    `<text x="${kx}" y="${ky + 50}" fill="#555">points: fixed rates</text>`,
    `<text x="${kx}" y="${ky + 65}" fill="#555">and saturation (rightmost)</text>`,
    "</svg>",
  )
  return out.join("\n")
}

/** Writes report.json, summary.md and latency.svg into `dir`; returns the summary text. */
export const writeReport = (dir: string, input: ReportInput): string => {
  mkdirSync(dir, { recursive: true })
  const groups = summarize(input.runs)
  const summary = summaryMarkdown(input, groups)
  writeFileSync(join(dir, "report.json"), `${JSON.stringify({ ...input, summary: groups }, null, 2)}\n`)
  writeFileSync(join(dir, "summary.md"), summary)
  writeFileSync(join(dir, "latency.svg"), `${latencySvg(input, groups)}\n`)
  return summary
}
