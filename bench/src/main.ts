import { mkdtempSync, rmSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { positiveFlag } from "./args.ts"
import { sleep } from "./clock.ts"
import { costPerTicket, makeCostWindow } from "./counts.ts"
import { type FanoutResult, runFanout } from "./fanout.ts"
import { type FootprintResult, packagedPeer, runFootprint } from "./footprint.ts"
import { startMachineSampler, startProcessSampler } from "./procstat.ts"
import { type RealPeersResult, runRealPeers } from "./realPeers.ts"
import { describeMachine, type RunFailure, type RunRecord, writeReport } from "./report.ts"
import { median } from "./stats.ts"
import { runStorm, type StormResult } from "./storm.ts"
import type { BenchEnv, MeasuredWindow, RunResult, SystemEntry } from "./system.ts"
import { bullmq, bullmqBatched } from "./systems/bullmq.ts"
import { picus1, picus2 } from "./systems/picus.ts"
import { streamsCeiling } from "./systems/streamsCeiling.ts"

/** Every system `pnpm bench` knows, in the order they take turns. Add new ones here. */
const systems: ReadonlyArray<SystemEntry> = [picus1, picus2, bullmq, bullmqBatched, streamsCeiling]
/** Phases of picus alone, run after the systems' phases: with the picus systems, or named in --only. */
const extras = ["storm", "real-peers", "fanout", "footprint"] as const

const usage = `Usage: pnpm bench [options]
  --repeats N      repeats of every measurement (default 3; 1 with --quick)
  --tickets N      tickets per saturation run (default 20000; 2000 with --quick)
  --duration S     seconds per fixed-rate run (default 10; 2 with --quick)
  --rate R         the fixed rate in tickets/s (default 200); a second rate is half each system's saturation
  --warmup S       seconds each rate run submits at its rate first, answered and not counted (default 2;
                   1 with --quick; 0 for none): every system measured warm
  --workers N      workers (BullMQ concurrency, simulated workers, peers) (default 50)
  --only a,b       only these systems or extra phases (known: ${[...systems.map((s) => s.name), ...extras].join(", ")});
                   the extra phases run by default whenever a picus system does
  --storm-peers N  simulated peers registering at once in the storm phase (default 10000; 1000 with --quick)
  --storm-idle S   seconds the storm's fleet idles, heartbeating, after it (default 20; 5 with --quick)
  --real-peers P   real peer processes in the real-peers phase (default 4)
  --fanout-peers F real peers in the fan-out phase (default 20; 5 with --quick)
  --fanout-warmups W runs of each way before the counted ones in the fan-out phase, reported apart
                   (default 10; 1 with --quick): long-lived peers and servers, measured warm
  --real-tickets K tickets (the command true) in the real-peers phase (default 400; 100 with --quick)
  --phases a,b     only these phases (known: saturation, rate, half, and the extra phases); half
                   needs saturation. Default: all
  --quick          small numbers, for a smoke run
  --out DIR        where to write the report (default bench/results/<timestamp>)
Footprint phase: an idle peer, packaged (./picus package; BENCH_PEER_EXECUTABLE to give one) and from source.
Environment: BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), BENCH_REDIS_URL
(default redis://127.0.0.1:6379).`

const { values } = parseArgs({
  options: {
    repeats: { type: "string" },
    tickets: { type: "string" },
    duration: { type: "string" },
    rate: { type: "string" },
    warmup: { type: "string" },
    workers: { type: "string" },
    "storm-peers": { type: "string" },
    "storm-idle": { type: "string" },
    "real-peers": { type: "string" },
    "real-tickets": { type: "string" },
    "fanout-peers": { type: "string" },
    "fanout-warmups": { type: "string" },
    only: { type: "string" },
    phases: { type: "string" },
    quick: { type: "boolean", default: false },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
})
if (values.help) {
  console.log(usage)
  process.exit(0)
}

const int = positiveFlag(usage)
const quick = values.quick
const repeats = Math.round(int("repeats", values.repeats, quick ? 1 : 3))
const tickets = Math.round(int("tickets", values.tickets, quick ? 2000 : 20_000))
const durationMs = int("duration", values.duration, quick ? 2 : 10) * 1000
const fixedRate = int("rate", values.rate, 200)
const warmupMs = Number(values.warmup ?? (quick ? 1 : 2)) * 1000
if (!Number.isFinite(warmupMs) || warmupMs < 0) {
  console.error(`--warmup takes a number of seconds, 0 or more (got ${values.warmup})\n\n${usage}`)
  process.exit(2)
}
const workers = Math.round(int("workers", values.workers, 50))
const stormPeers = Math.round(int("storm-peers", values["storm-peers"], quick ? 1000 : 10_000))
const stormIdleMs = int("storm-idle", values["storm-idle"], quick ? 5 : 20) * 1000
const realPeers = Math.round(int("real-peers", values["real-peers"], 4))
const realTickets = Math.round(int("real-tickets", values["real-tickets"], quick ? 100 : 400))
const fanoutPeers = Math.round(int("fanout-peers", values["fanout-peers"], quick ? 5 : 20))
const fanoutWarmups = Math.round(int("fanout-warmups", values["fanout-warmups"], quick ? 1 : 10))
const only = values.only?.split(",").map((s) => s.trim())
const unknown =
  only?.filter((n) => !systems.some((s) => s.name === n) && !(extras as ReadonlyArray<string>).includes(n)) ??
  []
if (unknown.length > 0) {
  console.error(`unknown system(s): ${unknown.join(", ")}\n\n${usage}`)
  process.exit(2)
}
const mainPhases = ["saturation", "rate", "half"] as const
const phases = values.phases?.split(",").map((s) => s.trim())
const unknownPhases =
  phases?.filter(
    (p) =>
      !(mainPhases as ReadonlyArray<string>).includes(p) && !(extras as ReadonlyArray<string>).includes(p),
  ) ?? []
if (unknownPhases.length > 0) {
  console.error(`unknown phase(s): ${unknownPhases.join(", ")}\n\n${usage}`)
  process.exit(2)
}
const phaseChosen = (name: string): boolean => phases === undefined || phases.includes(name)
const chosen = only === undefined ? systems : systems.filter((s) => only.includes(s.name))
const withPicus = chosen.some((s) => s.name.startsWith("picus-"))
const extraChosen = (name: (typeof extras)[number]): boolean =>
  phaseChosen(name) && (withPicus || (only?.includes(name) ?? false))

const env: BenchEnv = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}
const startedAt = new Date()
const outDir =
  values.out ?? join(import.meta.dirname, "..", "results", startedAt.toISOString().replace(/[:.]/g, "-"))

const runs: RunRecord[] = []
const failures: RunFailure[] = []
const storms: StormResult[] = []
const realPeerRuns: RealPeersResult[] = []

const fmt = (r: RunResult): string =>
  `${r.tickets} tickets in ${(r.durationMs / 1000).toFixed(2)} s = ${Math.round(r.throughput)}/s, ` +
  `p50 ${r.latencyMs.p50.toFixed(1)} ms, p95 ${r.latencyMs.p95.toFixed(1)} ms, ` +
  `p99 ${r.latencyMs.p99.toFixed(1)} ms, max ${r.latencyMs.max.toFixed(1)} ms, errors ${r.errors}`

const fmtCost = (c: ReturnType<typeof costPerTicket>): string =>
  [
    c.serverCpuMs === undefined ? undefined : `server ${c.serverCpuMs.toFixed(3)} ms CPU`,
    `bench ${c.benchCpuMs.toFixed(3)} ms`,
    `machine ${c.machineCpuMs.toFixed(3)} ms`,
    `PG ${c.pgServerStatements === undefined ? "" : `${c.pgServerStatements.toFixed(2)} server + `}` +
      `${c.pgBenchStatements.toFixed(2)} bench statements, ${c.pgTransactions.toFixed(2)} xacts`,
    `Redis ${c.redisCommands.toFixed(2)} commands`,
    `lo ${Math.round(c.loopbackBytes)} B`,
  ]
    .filter((x) => x !== undefined)
    .join(", ")

/** One run on a fresh instance: setup, measure, teardown (always). Failures are recorded, not fatal. */
const runOnce = async (
  entry: SystemEntry,
  repeat: number,
  phase: string,
  measure: (system: ReturnType<SystemEntry["create"]>, window: MeasuredWindow) => Promise<RunResult>,
): Promise<void> => {
  const label = `[${entry.name} · ${phase} · ${repeat}/${repeats}]`
  const system = entry.create(env)
  const costs = makeCostWindow(env, system)
  try {
    await system.setup()
    const loadAvg1 = loadavg()[0] ?? 0
    const machine = startMachineSampler()
    const self = startProcessSampler(process.pid)
    const result = await measure(system, costs.window)
    const sampled = { machine: machine.stop().meanCores, bench: self.stop().meanCores }
    const cost = costs.result()
    // Over the measured window when there is one: a run's own set-up (picus's fleet logging in) is
    // not the run's load.
    const windowCores = (ms: number) =>
      cost === undefined || cost.windowMs <= 0 ? undefined : ms / cost.windowMs
    const cpu = {
      machineCores: windowCores(cost?.cpuMs.machine ?? 0) ?? sampled.machine,
      benchProcessCores: windowCores(cost?.cpuMs.benchProcess ?? 0) ?? sampled.bench,
      loadAvg1,
    }
    runs.push({ ...result, repeat, phase, cpu, ...(cost === undefined ? {} : { cost }) })
    console.log(
      `${label} ${fmt(result)}; cores: machine ${cpu.machineCores.toFixed(2)}, ` +
        `bench ${cpu.benchProcessCores.toFixed(2)}; load ${loadAvg1.toFixed(1)}`,
    )
    if (cost !== undefined) console.log(`    per ticket: ${fmtCost(costPerTicket(result.tickets, cost))}`)
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    failures.push({ system: entry.name, phase, repeat, error: message })
    console.log(`${label} FAILED: ${message}`)
  } finally {
    await costs.close()
    await system
      .teardown()
      .catch((error: unknown) => console.log(`${label} teardown failed: ${String(error)}`))
  }
  // Let PostgreSQL and Redis settle (dropped database, freed memory) before the next run.
  await sleep(500)
}

console.log(
  `bench: ${chosen.map((s) => s.name).join(", ") || "no systems"}; ${repeats} repeat(s); saturation ` +
    `${tickets} tickets; rates ${fixedRate}/s and half of saturation for ${durationMs / 1000} s; ${workers} workers` +
    `${extras
      .filter(extraChosen)
      .map((e) => `; ${e}`)
      .join("")}`,
)

// Systems take turns (A B C A B C ...) so slow drifts of the machine hit them alike.
for (let rep = 1; rep <= repeats && phaseChosen("saturation"); rep++) {
  for (const entry of chosen)
    await runOnce(entry, rep, "saturation", (s, w) => s.saturation(tickets, workers, w))
}
const halfRate = new Map<string, number>()
for (const entry of chosen) {
  const sat = runs.filter((r) => r.system === entry.name && r.phase === "saturation").map((r) => r.throughput)
  if (sat.length > 0) halfRate.set(entry.name, Math.max(1, Math.round(median(sat) / 2)))
}
for (let rep = 1; rep <= repeats && phaseChosen("rate"); rep++) {
  for (const entry of chosen) {
    await runOnce(entry, rep, `rate ${fixedRate}/s`, (s, w) =>
      s.atRate(fixedRate, durationMs, workers, w, warmupMs),
    )
  }
}
for (let rep = 1; rep <= repeats && phaseChosen("half"); rep++) {
  for (const entry of chosen) {
    const rate = halfRate.get(entry.name)
    if (rate === undefined) continue
    await runOnce(entry, rep, `rate ${rate}/s`, (s, w) => s.atRate(rate, durationMs, workers, w, warmupMs))
  }
}

// Once each (not repeated): a storm of thousands of peers is long, and its spread is not the point.
if (extraChosen("storm")) {
  const timeoutMs = 300_000
  for (const instances of [1, 2]) {
    const r = await runStorm(env, instances, { peers: stormPeers, idleMs: stormIdleMs, timeoutMs })
    storms.push(r)
    const phase = `${instances} instance(s), ${stormPeers} peers`
    if (r.error !== undefined) {
      failures.push({ system: "storm", phase, repeat: 1, error: r.error })
      console.log(`[storm · ${phase}] FAILED: ${r.error}`)
    } else {
      console.log(
        `[storm · ${phase}] idle: server ${r.idleServerCores!.toFixed(2)} cores, peak RSS ` +
          `${(r.serverRssPeakBytes! / 2 ** 20).toFixed(0)} MiB; expired ${r.idleExpired}, rejected ` +
          `${r.idleRejected}, registered again ${r.idleReregistered}`,
      )
    }
  }
}
/** The packaged peer for the real-peers phase; a build that fails leaves its row out, said so. */
const packagedOrNone = (dir: string): string | undefined => {
  try {
    return packagedPeer(dir)
  } catch (error) {
    console.log(`[real-peers] no packaged peer (${error instanceof Error ? error.message : String(error)})`)
    return undefined
  }
}
if (extraChosen("real-peers")) {
  const packaged = mkdtempSync(join(tmpdir(), "bench-packaged-peer-"))
  const rows = await runRealPeers(env, {
    peers: realPeers,
    tickets: realTickets,
    timeoutMs: 300_000,
    packagedExecutable: packagedOrNone(packaged),
  }).finally(() => rmSync(packaged, { recursive: true, force: true }))
  realPeerRuns.push(...rows)
  for (const r of rows) {
    if (r.error !== undefined)
      failures.push({ system: "real-peers", phase: `${r.kind} peers`, repeat: 1, error: r.error })
  }
}

let fanout: FanoutResult | undefined
if (extraChosen("fanout")) {
  fanout = await runFanout(env, { peers: fanoutPeers, repeats: quick ? 3 : 5, warmups: fanoutWarmups })
  if (fanout.error !== undefined)
    failures.push({ system: "fanout", phase: `${fanoutPeers} peers`, repeat: 1, error: fanout.error })
  else
    console.log(
      `[fanout · ${fanoutPeers} peers] median ${(fanout.medianWallMs! / 1000).toFixed(3)} s, ` +
        `${fanout.medianMachineCpuS!.toFixed(2)} machine CPU-s, ${fanout.medianOwnCpuS!.toFixed(2)} own CPU-s`,
    )
}

let footprint: FootprintResult | undefined
if (extraChosen("footprint")) {
  footprint = await runFootprint(env, { idleMs: quick ? 10_000 : 60_000 })
  const failed = [footprint.error, ...footprint.rows.map((r) => r.error)].filter((e) => e !== undefined)
  for (const error of failed) failures.push({ system: "footprint", phase: "idle peer", repeat: 1, error })
  for (const r of footprint.rows)
    if (r.error === undefined)
      console.log(
        `[footprint · ${r.kind} peer] idle ${(r.rssBytes! / 2 ** 20).toFixed(1)} MiB RSS, ` +
          `${r.cores!.toFixed(4)} cores; registered in ${r.registeredMs!.toFixed(0)} ms`,
      )
}

const summary = writeReport(outDir, {
  machine: describeMachine(),
  options: {
    repeats,
    tickets,
    durationMs,
    warmupMs,
    fixedRate,
    workers,
    quick,
    systems: chosen.map((s) => s.name),
    ...(extraChosen("storm") ? { stormPeers, stormIdleMs } : {}),
    ...(extraChosen("real-peers") ? { realPeers, realTickets } : {}),
    ...(extraChosen("fanout") ? { fanoutPeers, fanoutWarmups } : {}),
  },
  systems: chosen.map((s) => s.name),
  runs,
  failures,
  storms,
  realPeers: realPeerRuns,
  ...(fanout === undefined ? {} : { fanout }),
  ...(footprint === undefined ? {} : { footprint }),
  wallMs: Date.now() - startedAt.getTime(),
})
console.log(`\n${summary}`)
console.log(`report: ${outDir}`)
process.exit(failures.length > 0 ? 1 : 0)
