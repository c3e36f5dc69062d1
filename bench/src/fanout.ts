import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { sleep, wallNow } from "./clock.ts"
import { stopProcess } from "./processes.ts"
import { readProcess, startMachineSampler } from "./procstat.ts"
import { startPeer } from "./realPeers.ts"
import { median } from "./stats.ts"
import { type Cluster, startCluster, withTimeout } from "./storm.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Fan-out: what an operator waits for. P real peers on one server; `./picus run --all -- echo hi`
 * from the command to its exit, R times, with the CPU seconds the whole machine spent meanwhile
 * (every process: the command, the server, the peers and their shells, PostgreSQL, Redis).
 */

const picus = join(import.meta.dirname, "..", "..", "picus")

export interface FanoutOptions {
  readonly peers: number
  readonly repeats: number
}

export interface FanoutRun {
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

export interface FanoutResult {
  readonly peers: number
  readonly runs: ReadonlyArray<FanoutRun>
  readonly medianWallMs?: number
  readonly medianMachineCpuS?: number
  readonly medianOwnCpuS?: number
  readonly error?: string
}

/** CPU ms of the given processes with their reaped children. */
const treeCpuMs = (pids: ReadonlyArray<number>): number =>
  pids.reduce((sum, pid) => sum + readProcess(pid, { children: true }).cpuMs, 0)

const runOnce = async (cluster: Cluster, peerPids: ReadonlyArray<number>): Promise<FanoutRun> => {
  const serverPids = cluster.servers.map((s) => s.pid!)
  // The bench's own CPU is not the command's: only its reaped children's (cutime + cstime).
  const commandCpuMs = () => treeCpuMs([process.pid]) - readProcess(process.pid).cpuMs
  const idle = startMachineSampler()
  await sleep(500)
  const backgroundCores = idle.stop().meanCores
  const before = { command: commandCpuMs(), server: treeCpuMs(serverPids), peers: treeCpuMs(peerPids) }
  const machine = startMachineSampler()
  const startedAt = wallNow()
  const child = spawn(picus, ["run", "--all", "--json", "--", "echo hi"], {
    env: {
      ...process.env,
      DATABASE_URL: cluster.databaseUrl,
      REDIS_URL: cluster.redisUrl,
      PICUS_REDIS_PREFIX: cluster.prefix,
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
    server: (treeCpuMs(serverPids) - before.server) / 1000,
    peers: (treeCpuMs(peerPids) - before.peers) / 1000,
  }
  if (exitCode !== 0) throw new Error(`picus run exited ${exitCode}:\n${output}`)
  const { rows } = await cluster.pool.query<{ n: number }>(
    `select count(*)::int as n from tickets where state = 'succeeded'
       and run_id = (select run_id from runs order by created_at desc limit 1)`,
  )
  return {
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
    cluster = await startCluster(env, "fanout", 1)
    const started = cluster
    for (let i = 0; i < options.peers; i++)
      peers.push(
        await withTimeout(
          startPeer(started, `fan-${i}`, join(dir, `fan-${i}`)),
          60_000,
          () => `peer fan-${i}`,
        ),
      )
    // One run first, not counted: the command's compiled code is cached from then on, as for an operator.
    const peerPids = peers.map((p) => p.pid!)
    await runOnce(started, peerPids)
    const runs: Array<FanoutRun> = []
    for (let i = 0; i < options.repeats; i++) {
      const run = await runOnce(started, peerPids)
      if (run.succeeded !== options.peers)
        throw new Error(`run ${i + 1}: ${run.succeeded} of ${options.peers} peers succeeded`)
      runs.push(run)
    }
    return {
      peers: options.peers,
      runs,
      medianWallMs: median(runs.map((r) => r.wallMs)),
      medianMachineCpuS: median(runs.map((r) => r.machineCpuS)),
      medianOwnCpuS: median(runs.map((r) => r.ownCpuS)),
    }
  } catch (error) {
    return { peers: options.peers, runs: [], error: error instanceof Error ? error.message : String(error) }
  } finally {
    await Promise.all(peers.map((p) => stopProcess(p)))
    await cluster?.stop().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}
