import { loadavg } from "node:os"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { sleep } from "./clock.ts"
import { startMachineSampler, startProcessSampler } from "./procstat.ts"
import { describeMachine, type RunFailure, type RunRecord, writeReport } from "./report.ts"
import { median } from "./stats.ts"
import type { BenchEnv, RunResult, SystemEntry } from "./system.ts"
import { bullmq, bullmqBatched } from "./systems/bullmq.ts"
import { picus1, picus2 } from "./systems/picus.ts"
import { streamsCeiling } from "./systems/streamsCeiling.ts"

/** Every system `pnpm bench` knows, in the order they take turns. Add new ones here. */
const systems: ReadonlyArray<SystemEntry> = [picus1, picus2, bullmq, bullmqBatched, streamsCeiling]

const usage = `Usage: pnpm bench [options]
  --repeats N      repeats of every measurement (default 3; 1 with --quick)
  --tickets N      tickets per saturation run (default 20000; 2000 with --quick)
  --duration S     seconds per fixed-rate run (default 10; 2 with --quick)
  --rate R         the fixed rate in tickets/s (default 200); a second rate is half each system's saturation
  --workers N      workers (BullMQ concurrency, simulated workers, peers) (default 50)
  --only a,b       only these systems (known: ${systems.map((s) => s.name).join(", ")})
  --quick          small numbers, for a smoke run
  --out DIR        where to write the report (default bench/results/<timestamp>)
Environment: BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), BENCH_REDIS_URL
(default redis://127.0.0.1:6379).`

const { values } = parseArgs({
  options: {
    repeats: { type: "string" },
    tickets: { type: "string" },
    duration: { type: "string" },
    rate: { type: "string" },
    workers: { type: "string" },
    only: { type: "string" },
    quick: { type: "boolean", default: false },
    out: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
})
if (values.help) {
  console.log(usage)
  process.exit(0)
}

const int = (name: string, raw: string | undefined, fallback: number): number => {
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (!Number.isFinite(n) || n <= 0) {
    console.error(`--${name} must be a positive number, got ${raw}\n\n${usage}`)
    process.exit(2)
  }
  return n
}
const quick = values.quick
const repeats = Math.round(int("repeats", values.repeats, quick ? 1 : 3))
const tickets = Math.round(int("tickets", values.tickets, quick ? 2000 : 20_000))
const durationMs = int("duration", values.duration, quick ? 2 : 10) * 1000
const fixedRate = int("rate", values.rate, 200)
const workers = Math.round(int("workers", values.workers, 50))
const only = values.only?.split(",").map((s) => s.trim())
const unknown = only?.filter((n) => !systems.some((s) => s.name === n)) ?? []
if (unknown.length > 0) {
  console.error(`unknown system(s): ${unknown.join(", ")}\n\n${usage}`)
  process.exit(2)
}
const chosen = only === undefined ? systems : systems.filter((s) => only.includes(s.name))

const env: BenchEnv = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}
const startedAt = new Date()
const outDir =
  values.out ?? join(import.meta.dirname, "..", "results", startedAt.toISOString().replace(/[:.]/g, "-"))

const runs: RunRecord[] = []
const failures: RunFailure[] = []

const fmt = (r: RunResult): string =>
  `${r.tickets} tickets in ${(r.durationMs / 1000).toFixed(2)} s = ${Math.round(r.throughput)}/s, ` +
  `p50 ${r.latencyMs.p50.toFixed(1)} ms, p95 ${r.latencyMs.p95.toFixed(1)} ms, ` +
  `p99 ${r.latencyMs.p99.toFixed(1)} ms, max ${r.latencyMs.max.toFixed(1)} ms, errors ${r.errors}`

/** One run on a fresh instance: setup, measure, teardown (always). Failures are recorded, not fatal. */
const runOnce = async (
  entry: SystemEntry,
  repeat: number,
  phase: string,
  measure: (system: ReturnType<SystemEntry["create"]>) => Promise<RunResult>,
): Promise<void> => {
  const label = `[${entry.name} · ${phase} · ${repeat}/${repeats}]`
  const system = entry.create(env)
  try {
    await system.setup()
    const loadAvg1 = loadavg()[0] ?? 0
    const machine = startMachineSampler()
    const self = startProcessSampler(process.pid)
    const result = await measure(system)
    const cpu = { machineCores: machine.stop().meanCores, benchProcessCores: self.stop().meanCores, loadAvg1 }
    runs.push({ ...result, repeat, phase, cpu })
    console.log(
      `${label} ${fmt(result)}; cores: machine ${cpu.machineCores.toFixed(2)}, ` +
        `bench ${cpu.benchProcessCores.toFixed(2)}; load ${loadAvg1.toFixed(1)}`,
    )
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    failures.push({ system: entry.name, phase, repeat, error: message })
    console.log(`${label} FAILED: ${message}`)
  } finally {
    await system
      .teardown()
      .catch((error: unknown) => console.log(`${label} teardown failed: ${String(error)}`))
  }
  // Let PostgreSQL and Redis settle (dropped database, freed memory) before the next run.
  await sleep(500)
}

console.log(
  `bench: ${chosen.map((s) => s.name).join(", ")}; ${repeats} repeat(s); saturation ${tickets} tickets; ` +
    `rates ${fixedRate}/s and half of saturation for ${durationMs / 1000} s; ${workers} workers`,
)

// Systems take turns (A B C A B C ...) so slow drifts of the machine hit them alike.
for (let rep = 1; rep <= repeats; rep++) {
  for (const entry of chosen) await runOnce(entry, rep, "saturation", (s) => s.saturation(tickets, workers))
}
const halfRate = new Map<string, number>()
for (const entry of chosen) {
  const sat = runs.filter((r) => r.system === entry.name && r.phase === "saturation").map((r) => r.throughput)
  if (sat.length > 0) halfRate.set(entry.name, Math.max(1, Math.round(median(sat) / 2)))
}
for (let rep = 1; rep <= repeats; rep++) {
  for (const entry of chosen) {
    await runOnce(entry, rep, `rate ${fixedRate}/s`, (s) => s.atRate(fixedRate, durationMs, workers))
  }
}
for (let rep = 1; rep <= repeats; rep++) {
  for (const entry of chosen) {
    const rate = halfRate.get(entry.name)
    if (rate === undefined) continue
    await runOnce(entry, rep, `rate ${rate}/s`, (s) => s.atRate(rate, durationMs, workers))
  }
}

const summary = writeReport(outDir, {
  machine: describeMachine(),
  options: { repeats, tickets, durationMs, fixedRate, workers, quick, systems: chosen.map((s) => s.name) },
  systems: chosen.map((s) => s.name),
  runs,
  failures,
  wallMs: Date.now() - startedAt.getTime(),
})
console.log(`\n${summary}`)
console.log(`report: ${outDir}`)
process.exit(failures.length > 0 ? 1 : 0)
