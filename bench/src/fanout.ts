import { spawn, spawnSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { sleep, wallNow } from "./clock.ts"
import { stopProcess } from "./processes.ts"
import { readProcess, startMachineSampler, treeCpuMs } from "./procstat.ts"
import { startPeer } from "./realPeers.ts"
import { median } from "./stats.ts"
import { type Cluster, startCluster, withTimeout } from "./storm.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Fan-out: what an operator waits for. P real peers on one server; `./picus run --all -- echo hi`
 * from the command to its exit, R times, with the CPU seconds the whole machine spent meanwhile
 * (every process: the command, the server, the peers and their shells, PostgreSQL, Redis). The
 * peers run as `./picus peer` runs them (the bundle). The command goes through the server's HTTP
 * API (PICUS_API_URL, as on an operator's machine), then, R times more, to PostgreSQL and Redis
 * directly (as on a server's own machine).
 */

const picus = join(import.meta.dirname, "..", "..", "picus")

export interface FanoutOptions {
  readonly peers: number
  readonly repeats: number
  /**
   * Runs of each way before the counted ones. Peers and servers are long-lived: the first jobs after
   * a start pay for V8 compiling their code (the peers' first runs cost twice their later ones), which
   * an operator's fleet paid once, long ago. They are reported, not counted.
   */
  readonly warmups: number
}

/** How the command reaches the cluster: the server's HTTP API, or PostgreSQL and Redis directly. */
export type FanoutMode = "api" | "direct"

export interface FanoutRun {
  readonly mode: FanoutMode
  /** A warm-up run (reported, not in the medians). */
  readonly warmup?: boolean
  readonly wallMs: number
  readonly machineCpuS: number
  /** The machine's CPU in the 0.5 s before the command (nothing of this system running), per second. */
  readonly backgroundCores: number
  /**
   * CPU of this system's own processes alone: the command (reaped by the bench: its cutime), the
   * server, the peers with their shells. Not PostgreSQL's or Redis's; not what else the machine ran.
   */
  readonly ownCpuS: number
  /** Of which the command's, the server's and the peers' (with their shells). */
  readonly split: { readonly command: number; readonly server: number; readonly peers: number }
  readonly exitCode: number | string
  /** Tickets of the run that succeeded, from PostgreSQL. */
  readonly succeeded: number
}

export interface FanoutMedians {
  readonly wallMs: number
  readonly machineCpuS: number
  readonly ownCpuS: number
  readonly command: number
  readonly server: number
  readonly peers: number
}

export interface FanoutResult {
  readonly peers: number
  /** Through the API, then directly. */
  readonly runs: ReadonlyArray<FanoutRun>
  /** Of the API's runs (the headline). */
  readonly medianWallMs?: number
  readonly medianMachineCpuS?: number
  readonly medianOwnCpuS?: number
  readonly medians?: Partial<Record<FanoutMode, FanoutMedians>>
  /** Of each way's warm-up runs (not counted), and how many there were of each. */
  readonly warmupMedians?: Partial<Record<FanoutMode, FanoutMedians>>
  readonly warmupRuns?: number
  readonly error?: string
}

const picusCommand = { command: picus, args: ["peer"] }

/** A free port of 127.0.0.1 for the server's HTTP API. */
const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject()))
    })
  })

const clusterEnv = (cluster: Cluster) => ({
  DATABASE_URL: cluster.databaseUrl,
  REDIS_URL: cluster.redisUrl,
  PICUS_REDIS_PREFIX: cluster.prefix,
})

/** An admin operator token of the cluster, made as an operator makes one. */
const operatorToken = (cluster: Cluster): string => {
  const made = spawnSync(picus, ["operator-token", "create", "--name", "bench", "--scope", "admin"], {
    env: { ...process.env, ...clusterEnv(cluster) },
    encoding: "utf8",
  })
  const token = /picusop_\S+/.exec(made.stdout)?.[0]
  if (made.status !== 0 || token === undefined)
    throw new Error(`picus operator-token create exited ${made.status}:\n${made.stdout}${made.stderr}`)
  return token
}

const fanoutMedians = (runs: ReadonlyArray<FanoutRun>): FanoutMedians => ({
  wallMs: median(runs.map((r) => r.wallMs)),
  machineCpuS: median(runs.map((r) => r.machineCpuS)),
  ownCpuS: median(runs.map((r) => r.ownCpuS)),
  command: median(runs.map((r) => r.split.command)),
  server: median(runs.map((r) => r.split.server)),
  peers: median(runs.map((r) => r.split.peers)),
})

/** CPU ms of the given processes with all they started (reaped or still alive). */
const cpuOfTrees = (pids: ReadonlyArray<number>): number => pids.reduce((sum, pid) => sum + treeCpuMs(pid), 0)

const runOnce = async (
  cluster: Cluster,
  peerPids: ReadonlyArray<number>,
  mode: FanoutMode,
  api: { readonly url: string; readonly token: string },
): Promise<FanoutRun> => {
  const serverPids = cluster.servers.map((s) => s.pid!)
  // The bench's own CPU is not the command's: only its reaped children's (cutime + cstime).
  const commandCpuMs = () =>
    readProcess(process.pid, { children: true }).cpuMs - readProcess(process.pid).cpuMs
  const idle = startMachineSampler()
  await sleep(500)
  const backgroundCores = idle.stop().meanCores
  const before = { command: commandCpuMs(), server: cpuOfTrees(serverPids), peers: cpuOfTrees(peerPids) }
  const machine = startMachineSampler()
  const startedAt = wallNow()
  const child = spawn(picus, ["run", "--all", "--", "echo hi"], {
    env: {
      ...process.env,
      ...clusterEnv(cluster),
      ...(mode === "api" ? { PICUS_API_URL: api.url, PICUS_API_TOKEN: api.token } : {}),
    },
    stdio: ["ignore", "pipe", "pipe"],
  })
  let output = ""
  const collect = (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-50_000)
  }
  child.stdout.on("data", collect)
  child.stderr.on("data", collect)
  const exitCode = await new Promise<number | string>((resolve) =>
    child.on("exit", (code, signal) => resolve(code ?? signal ?? "unknown")),
  )
  const wallMs = wallNow() - startedAt
  const { wallMs: sampledMs, meanCores } = machine.stop()
  const split = {
    command: (commandCpuMs() - before.command) / 1000,
    server: (cpuOfTrees(serverPids) - before.server) / 1000,
    peers: (cpuOfTrees(peerPids) - before.peers) / 1000,
  }
  if (exitCode !== 0) throw new Error(`picus run exited ${exitCode}:\n${output}`)
  const { rows } = await cluster.pool.query<{ n: number }>(
    `select count(*)::int as n from tickets where state = 'succeeded'
       and run_id = (select run_id from runs order by created_at desc limit 1)`,
  )
  return {
    mode,
    wallMs,
    machineCpuS: (meanCores * sampledMs) / 1000,
    backgroundCores,
    ownCpuS: split.command + split.server + split.peers,
    split,
    exitCode,
    succeeded: rows[0]?.n ?? 0,
  }
}

export const runFanout = async (env: BenchEnv, options: FanoutOptions): Promise<FanoutResult> => {
  const dir = mkdtempSync(join(tmpdir(), "bench-fanout-"))
  let cluster: Cluster | undefined
  const peers: Array<Awaited<ReturnType<typeof startPeer>>> = []
  try {
    const port = await freePort()
    cluster = await startCluster(env, "fanout", 1, { PICUS_HTTP: `127.0.0.1:${port}` })
    const started = cluster
    for (let i = 0; i < options.peers; i++)
      peers.push(
        await withTimeout(
          startPeer(started, `fan-${i}`, join(dir, `fan-${i}`), picusCommand),
          60_000,
          () => `peer fan-${i}`,
        ),
      )
    const api = { url: `http://127.0.0.1:${port}`, token: operatorToken(started) }
    const peerPids = peers.map((p) => p.pid!)
    const runs: Array<FanoutRun> = []
    for (const mode of ["api", "direct"] as const) {
      // Warm-up first, not counted: the command's compiled code is cached from the first run on (as
      // for an operator), the peers' and the server's code is compiled over the first runs.
      for (let i = 0; i < Math.max(1, options.warmups); i++)
        runs.push({ ...(await runOnce(started, peerPids, mode, api)), warmup: true })
      for (let i = 0; i < options.repeats; i++) {
        const run = await runOnce(started, peerPids, mode, api)
        if (run.succeeded !== options.peers)
          throw new Error(`${mode} run ${i + 1}: ${run.succeeded} of ${options.peers} peers succeeded`)
        runs.push(run)
      }
    }
    const counted = runs.filter((r) => r.warmup !== true)
    const warmups = runs.filter((r) => r.warmup === true)
    const apiMedians = fanoutMedians(counted.filter((r) => r.mode === "api"))
    return {
      peers: options.peers,
      runs,
      medianWallMs: apiMedians.wallMs,
      medianMachineCpuS: apiMedians.machineCpuS,
      medianOwnCpuS: apiMedians.ownCpuS,
      medians: { api: apiMedians, direct: fanoutMedians(counted.filter((r) => r.mode === "direct")) },
      warmupMedians: {
        api: fanoutMedians(warmups.filter((r) => r.mode === "api")),
        direct: fanoutMedians(warmups.filter((r) => r.mode === "direct")),
      },
      warmupRuns: warmups.length / 2,
    }
  } catch (error) {
    return { peers: options.peers, runs: [], error: error instanceof Error ? error.message : String(error) }
  } finally {
    await Promise.all(peers.map((p) => stopProcess(p)))
    await cluster?.stop().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}
