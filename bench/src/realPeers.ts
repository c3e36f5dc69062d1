import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { submitJobs } from "server"
import { sleep, wallNow } from "./clock.ts"
import { stopProcess } from "./processes.ts"
import { readProcess, startMachineSampler, startProcessSampler, treeCpuMs } from "./procstat.ts"
import { percentiles } from "./stats.ts"
import { type Cluster, makeFleet, startCluster, withTimeout } from "./storm.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Real peers: P peer processes (the real CLI) run real shell jobs (`true`), against P simulated
 * peers that answer at once, on the same server. The difference is what running a job costs the
 * peer — a shell spawned per ticket — as opposed to the messaging both share. Beside them, in the
 * same run, the spawn baseline: P Node processes spawning `sh -c true` the way the peer's executor
 * does, with the same concurrency each, for as many jobs: the rate no peer on this machine can
 * beat, since it spawns the same shells and does nothing else.
 */

const repoRoot = join(import.meta.dirname, "..", "..")
const peerScript = join(repoRoot, "packages", "peer", "src", "main.ts")

export interface RealPeersOptions {
  readonly peers: number
  readonly tickets: number
  readonly timeoutMs: number
  /** The packaged peer (`./picus package`), measured in a row of its own beside the sources'. */
  readonly packagedExecutable?: string | undefined
}

export interface RealPeersResult {
  /** real: the peer from its sources; real-packaged: the executable of `./picus package`. */
  readonly kind: "real" | "real-packaged" | "simulated" | "spawn-baseline"
  /** Peer processes (for the spawn baseline: Node processes spawning shells). */
  readonly peers: number
  /** Jobs a real peer (or a baseline process) runs at once (PICUS_CONCURRENCY); undefined for the simulated peers. */
  readonly concurrency?: number
  readonly tickets: number
  /** First ticket created → last result received, from PostgreSQL (the baseline: first spawn → last exit). */
  readonly durationMs?: number
  readonly throughput?: number
  readonly latencyMs?: { readonly p50: number; readonly p99: number }
  /** Mean cores of the server process. */
  readonly serverCores?: number
  /**
   * Mean cores of the peers: real peer processes with their (reaped) shells; for the simulated
   * peers, the bench process, which also submits the tickets.
   */
  readonly peerCores?: number
  /** Peer CPU per ticket, in ms (real peers and the baseline: with their shells). */
  readonly peerCpuMsPerTicket?: number
  /** Of which the peer processes' own (the rest is their shells'); real peers and the baseline. */
  readonly peerOwnCpuMsPerTicket?: number
  /** Throughput over the spawn baseline's in the same run. */
  readonly vsSpawnBaseline?: number
  readonly machineCores?: number
  /** 1-minute load average when the row started. */
  readonly loadAvg1?: number
  readonly error?: string
}

/** CPU time of processes, in ms: their own, and with all they started (shells, running or reaped). */
const cpuOf = (pids: ReadonlyArray<number>) =>
  pids.reduce(
    (a, pid) => ({
      own: a.own + readProcess(pid).cpuMs,
      all: a.all + treeCpuMs(pid),
    }),
    { own: 0, all: 0 },
  )

/** Mean cores used by `pids` and their reaped children between start and stop; the pids must live. */
const startTreeSampler = (pids: ReadonlyArray<number>) => {
  const startedAt = wallNow()
  const first = cpuOf(pids)
  return {
    stop: () => {
      const last = cpuOf(pids)
      const cpuMs = last.all - first.all
      return { cpuMs, ownCpuMs: last.own - first.own, meanCores: cpuMs / (wallNow() - startedAt) }
    },
  }
}

/** How a peer is started, if not from the sources: a command and its first arguments. */
export interface PeerLauncher {
  readonly command: string
  readonly args: ReadonlyArray<string>
}

export const startPeer = (
  cluster: Cluster,
  peerId: string,
  stateDir: string,
  launcher?: PeerLauncher,
): Promise<ChildProcess> =>
  new Promise((resolve, reject) => {
    // BENCH_PEER_NODE_ARGS: Node options for the peers only (--cpu-prof, say); BENCH_REAL_PEER_EXECUTABLE:
    // a packaged peer (./picus package) in place of the sources, to see what its V8 flags cost (its
    // arguments are the peer's own, so the Node options do not apply to it).
    const nodeArgs = process.env.BENCH_PEER_NODE_ARGS?.split(" ").filter(Boolean) ?? []
    const executable = process.env.BENCH_REAL_PEER_EXECUTABLE
    const [command, args] =
      launcher !== undefined
        ? [launcher.command, [...launcher.args]]
        : executable === undefined || executable === ""
          ? [process.execPath, [...nodeArgs, peerScript]]
          : [executable, []]
    const child = spawn(command, [...args, "--peer-id", peerId, "--state-dir", stateDir], {
      env: {
        ...process.env,
        PICUS_TOKEN: cluster.token,
        PICUS_CLUSTER_PUBLIC_KEY: cluster.clusterPublicKey,
        REDIS_URL: cluster.redisUrl,
        PICUS_REDIS_PREFIX: cluster.prefix,
      },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let output = ""
    // Read to the end: the peer prints a line per job, and a full pipe would block it.
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000)
      if (/registered as/.test(output)) resolve(child)
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) =>
      reject(new Error(`peer ${peerId} exited (${code}) before registering:\n${output}`)),
    )
  })

/** Submits `tickets` of `true`, one batch per peer, and waits for every result; timings from PostgreSQL. */
const measure = async (
  cluster: Cluster,
  peerIds: ReadonlyArray<string>,
  tickets: number,
  timeoutMs: number,
) => {
  await Promise.all(
    peerIds.map((peerId, i) => {
      const count = Math.floor(tickets / peerIds.length) + (i < tickets % peerIds.length ? 1 : 0)
      return cluster.run(
        submitJobs({
          peerId,
          submittedBy: "bench",
          jobs: Array.from({ length: count }, () => ({ name: "bench", command: "true", timeoutMs: 10_000 })),
        }),
      )
    }),
  )
  const done = async (): Promise<number> => {
    const { rows } = await cluster.pool.query<{ n: number }>(
      "select count(*)::int as n from job_results r join tickets t using (ticket) where t.peer_id = any($1)",
      [peerIds],
    )
    return rows[0]!.n
  }
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const seen = await done()
    if (seen >= tickets) break
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs / 1000} s: ${seen}/${tickets} results`)
    await sleep(50)
  }
  const { rows } = await cluster.pool.query<{
    latency: number
    created: number
    received: number
    status: string
  }>(
    `select extract(epoch from r.received_at - t.created_at) * 1000 as latency,
       extract(epoch from t.created_at) * 1000 as created, extract(epoch from r.received_at) * 1000 as received,
       r.status
     from job_results r join tickets t using (ticket) where t.peer_id = any($1)`,
    [peerIds],
  )
  const failed = rows.filter((r) => r.status !== "succeeded").length
  if (failed > 0) throw new Error(`${failed} of ${rows.length} jobs did not succeed`)
  const first = Math.min(...rows.map((r) => Number(r.created)))
  const last = Math.max(...rows.map((r) => Number(r.received)))
  const [p50, p99] = percentiles(
    rows.map((r) => Number(r.latency)),
    [50, 99],
  )
  const durationMs = last - first
  return { durationMs, throughput: (tickets * 1000) / durationMs, latencyMs: { p50: p50!, p99: p99! } }
}

/**
 * One baseline process: waits for a line on stdin (so its start-up is not measured), spawns
 * `count` shells, `concurrency` at a time, as the peer's executor does (a process group of its
 * own, stdout and stderr piped and read), says "done" and waits to be told to exit (so its CPU time,
 * with its reaped shells', can still be read).
 */
const baselineScript = `
import { spawn } from "node:child_process"
const [count, concurrency] = process.argv.slice(-2).map(Number)
let started = 0
let finished = 0
const next = () => {
  if (started >= count) {
    if (finished === count) process.stdout.write("done\\n")
    return
  }
  started++
  const child = spawn("/bin/sh", ["-c", "true"], { detached: true, stdio: ["ignore", "pipe", "pipe"] })
  const chunks = []
  child.stdout.on("data", (chunk) => chunks.push(chunk))
  child.stderr.on("data", (chunk) => chunks.push(chunk))
  child.on("close", (code) => {
    if (code !== 0) process.exit(3)
    Buffer.concat(chunks).toString("utf8")
    finished++
    next()
  })
}
process.stdout.write("ready\\n")
let told = 0
process.stdin.on("data", () => {
  if (told++ > 0) process.exit(0)
  for (let i = 0; i < Math.min(concurrency, count); i++) next()
  if (count === 0) process.stdout.write("done\\n")
})
`

/** A baseline process, once it is ready; `done` resolves when it has run its shells. */
const startBaselineProcess = (count: number, concurrency: number) =>
  new Promise<{ child: ChildProcess; done: Promise<void> }>((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--input-type=module", "-e", baselineScript, String(count), String(concurrency)],
      { stdio: ["pipe", "pipe", "pipe"] },
    )
    let output = ""
    let markDone: () => void = () => {}
    let failDone: (error: Error) => void = () => {}
    const done = new Promise<void>((res, rej) => {
      markDone = res
      failDone = rej
    })
    // Not awaited when the run fails before it starts.
    done.catch(() => {})
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000)
      if (output.includes("ready\n")) resolve({ child, done })
      if (output.includes("done\n")) markDone()
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => {
      const error = new Error(`a spawn baseline process exited (${code}):\n${output}`)
      reject(error)
      failDone(error)
    })
  })

/** The spawn baseline: `processes` Node processes, `concurrency` shells at a time each, `jobs` in all. */
const spawnBaseline = async (processes: number, concurrency: number, jobs: number, timeoutMs: number) => {
  const started: Array<{ child: ChildProcess; done: Promise<void> }> = []
  try {
    for (let i = 0; i < processes; i++) {
      const count = Math.floor(jobs / processes) + (i < jobs % processes ? 1 : 0)
      started.push(
        await withTimeout(startBaselineProcess(count, concurrency), 60_000, () => "spawn baseline"),
      )
    }
    const cpu = startTreeSampler(started.map((s) => s.child.pid!))
    const loadAvg1 = loadavg()[0] ?? 0
    const machine = startMachineSampler()
    const startedAt = wallNow()
    for (const { child } of started) child.stdin!.write("go\n")
    await withTimeout(Promise.all(started.map((s) => s.done)), timeoutMs, () => "spawn baseline")
    const durationMs = wallNow() - startedAt
    const used = cpu.stop()
    return {
      durationMs,
      throughput: (jobs * 1000) / durationMs,
      peerCores: used.meanCores,
      peerCpuMsPerTicket: used.cpuMs / jobs,
      peerOwnCpuMsPerTicket: used.ownCpuMs / jobs,
      machineCores: machine.stop().meanCores,
      loadAvg1,
    }
  } finally {
    for (const { child } of started) {
      if (child.exitCode === null && child.signalCode === null) {
        child.stdin!.write("exit\n")
        await stopProcess(child, 2_000)
      }
    }
  }
}

/** The real-peer row, the spawn baseline, then the simulated peers, on one server; each a result even when it fails. */
export const runRealPeers = async (env: BenchEnv, options: RealPeersOptions): Promise<RealPeersResult[]> => {
  const label = `[real-peers · ${options.peers} peers · ${options.tickets} tickets]`
  const concurrency = Number(process.env.PICUS_CONCURRENCY ?? 4)
  const results: RealPeersResult[] = []
  const dir = mkdtempSync(join(tmpdir(), "bench-real-peers-"))
  // An empty catalog: real peers send their os, and catalog jobs would mix with the measured ones.
  const catalog = join(dir, "catalog.json")
  writeFileSync(catalog, '{ "jobs": [] }\n')
  let cluster: Cluster | undefined
  const row = async (
    kind: RealPeersResult["kind"],
    body: () => Promise<Omit<RealPeersResult, "kind" | "peers" | "tickets">>,
  ): Promise<void> => {
    const base = { kind, peers: options.peers, tickets: options.tickets }
    try {
      const r: RealPeersResult = { ...base, ...(await body()) }
      results.push(r)
      const latency =
        r.latencyMs === undefined
          ? ""
          : `, p50 ${r.latencyMs.p50.toFixed(1)} ms, p99 ${r.latencyMs.p99.toFixed(1)} ms`
      const server = r.serverCores === undefined ? "" : `server ${r.serverCores.toFixed(2)}, `
      console.log(
        `${label} ${kind}: ${Math.round(r.throughput!)}/s${latency}; cores: ${server}` +
          `${kind === "spawn-baseline" ? "spawners" : "peers"} ${r.peerCores!.toFixed(2)} ` +
          `(${r.peerCpuMsPerTicket!.toFixed(2)} ms/ticket` +
          `${r.peerOwnCpuMsPerTicket === undefined ? "" : `, own ${r.peerOwnCpuMsPerTicket.toFixed(2)}`}), ` +
          `machine ${r.machineCores!.toFixed(2)}`,
      )
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error)
      results.push({ ...base, error: message })
      console.log(`${label} ${kind} FAILED: ${message}`)
    }
  }
  try {
    cluster = await startCluster(env, "realpeers", 1, { PICUS_CATALOG: catalog })
    const c = cluster
    const serverPid = c.servers[0]!.pid!

    /** Real peer processes, started by `launcher` (else from the sources), measured, then stopped. */
    const realRow = (kind: "real" | "real-packaged", launcher?: PeerLauncher) =>
      row(kind, async () => {
        const runId = randomBytes(3).toString("hex")
        const ids = Array.from({ length: options.peers }, (_, i) => `${kind}-${runId}-${i}`)
        const started: Array<ChildProcess> = []
        try {
          // Started one after another: startup costs are not what is measured.
          for (const id of ids)
            started.push(await withTimeout(startPeer(c, id, join(dir, id), launcher), 60_000, () => id))
          const server = startProcessSampler(serverPid)
          const peerCpu = startTreeSampler(started.map((p) => p.pid!))
          const loadAvg1 = loadavg()[0] ?? 0
          const machine = startMachineSampler()
          const m = await measure(c, ids, options.tickets, options.timeoutMs)
          const cpu = peerCpu.stop()
          return {
            concurrency,
            ...m,
            serverCores: server.stop().meanCores,
            peerCores: cpu.meanCores,
            peerCpuMsPerTicket: cpu.cpuMs / options.tickets,
            peerOwnCpuMsPerTicket: cpu.ownCpuMs / options.tickets,
            machineCores: machine.stop().meanCores,
            loadAvg1,
          }
        } finally {
          // Out of the way of the next rows.
          await Promise.all(started.map((p) => stopProcess(p, 5_000)))
        }
      })
    await realRow("real")
    // What an operator installs: smaller than the sources' process (no TypeScript stripping, one
    // bundle), so each fork for a job copies less (a fork's cost grows with the forking process's memory).
    if (options.packagedExecutable !== undefined)
      await realRow("real-packaged", { command: options.packagedExecutable, args: [] })

    await row("spawn-baseline", async () => ({
      concurrency,
      ...(await spawnBaseline(options.peers, concurrency, options.tickets, options.timeoutMs)),
    }))

    await row("simulated", async () => {
      const fleet = await makeFleet(c, options.peers, 0)
      await withTimeout(Effect.runPromise(fleet.allAccepted), 60_000, () => "simulated peers registering")
      const server = startProcessSampler(serverPid)
      const self = startProcessSampler(process.pid)
      const loadAvg1 = loadavg()[0] ?? 0
      const machine = startMachineSampler()
      const m = await measure(c, fleet.peerIds, options.tickets, options.timeoutMs)
      const cpu = self.stop()
      const result = {
        ...m,
        serverCores: server.stop().meanCores,
        peerCores: cpu.meanCores,
        peerCpuMsPerTicket: cpu.cpuMs / options.tickets,
        machineCores: machine.stop().meanCores,
        loadAvg1,
      }
      await Effect.runPromise(fleet.stop("peer_shutdown", 2_000)).catch(() => {})
      return result
    })
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    results.push({ kind: "real", peers: options.peers, tickets: options.tickets, error: message })
    console.log(`${label} FAILED: ${message}`)
  } finally {
    await cluster?.stop().catch((e: unknown) => console.log(`${label} teardown failed: ${String(e)}`))
    rmSync(dir, { recursive: true, force: true })
    await sleep(500)
  }
  const baseline = results.find((r) => r.kind === "spawn-baseline" && r.throughput !== undefined)?.throughput
  for (const kind of ["real", "real-packaged"] as const) {
    const real = results.find((r) => r.kind === kind)?.throughput
    if (baseline !== undefined && real !== undefined)
      console.log(
        `${label} ${kind} peers / spawn baseline: ${(real / baseline).toFixed(2)} (target at least 0.8)`,
      )
  }
  return results.map((r) =>
    baseline === undefined || r.throughput === undefined || r.kind === "spawn-baseline"
      ? r
      : { ...r, vsSpawnBaseline: r.throughput / baseline },
  )
}
