import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { submitJobs } from "server"
import { sleep, wallNow } from "./clock.ts"
import { stopProcess } from "./processes.ts"
import { readProcess, startMachineSampler, startProcessSampler } from "./procstat.ts"
import { percentiles } from "./stats.ts"
import { type Cluster, makeFleet, startCluster, withTimeout } from "./storm.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Real peers: P peer processes (the real CLI) run real shell jobs (`true`), against P simulated
 * peers that answer at once, on the same server. The difference is what running a job costs the
 * peer — a shell spawned per ticket — as opposed to the messaging both share.
 */

const repoRoot = join(import.meta.dirname, "..", "..")
const peerScript = join(repoRoot, "packages", "peer", "src", "main.ts")

export interface RealPeersOptions {
  readonly peers: number
  readonly tickets: number
  readonly timeoutMs: number
}

export interface RealPeersResult {
  readonly kind: "real" | "simulated"
  readonly peers: number
  /** Jobs a real peer runs at once (PICUS_CONCURRENCY); undefined for the simulated peers. */
  readonly concurrency?: number
  readonly tickets: number
  /** First ticket created → last result received, from PostgreSQL. */
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
  /** Peer CPU per ticket, in ms. */
  readonly peerCpuMsPerTicket?: number
  readonly machineCores?: number
  /** 1-minute load average when the row started. */
  readonly loadAvg1?: number
  readonly error?: string
}

/** A process's CPU time with that of the children it waited for (a peer's shells), in ms. */
const cpuWithChildrenMs = (pid: number): number => readProcess(pid, { children: true }).cpuMs

/** Mean cores used by `pids` and their reaped children between start and stop; the pids must live. */
const startTreeSampler = (pids: ReadonlyArray<number>) => {
  const sum = () => pids.reduce((a, pid) => a + cpuWithChildrenMs(pid), 0)
  const startedAt = wallNow()
  const first = sum()
  return {
    stop: () => {
      const cpuMs = sum() - first
      return { cpuMs, meanCores: cpuMs / (wallNow() - startedAt) }
    },
  }
}

const startPeer = (cluster: Cluster, peerId: string, stateDir: string): Promise<ChildProcess> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [peerScript, "--peer-id", peerId, "--state-dir", stateDir], {
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

/** The real-peer row, then the simulated one, on one server; each a result even when it fails. */
export const runRealPeers = async (env: BenchEnv, options: RealPeersOptions): Promise<RealPeersResult[]> => {
  const label = `[real-peers · ${options.peers} peers · ${options.tickets} tickets]`
  const concurrency = Number(process.env.PICUS_CONCURRENCY ?? 4)
  const results: RealPeersResult[] = []
  const dir = mkdtempSync(join(tmpdir(), "bench-real-peers-"))
  // An empty catalog: real peers send their os, and catalog jobs would mix with the measured ones.
  const catalog = join(dir, "catalog.json")
  writeFileSync(catalog, '{ "jobs": [] }\n')
  const peers: ChildProcess[] = []
  let cluster: Cluster | undefined
  const row = async (
    kind: RealPeersResult["kind"],
    body: () => Promise<Omit<RealPeersResult, "kind" | "peers" | "tickets">>,
  ): Promise<void> => {
    const base = { kind, peers: options.peers, tickets: options.tickets }
    try {
      const r: RealPeersResult = { ...base, ...(await body()) }
      results.push(r)
      console.log(
        `${label} ${kind}: ${Math.round(r.throughput!)}/s, p50 ${r.latencyMs!.p50.toFixed(1)} ms, ` +
          `p99 ${r.latencyMs!.p99.toFixed(1)} ms; cores: server ${r.serverCores!.toFixed(2)}, ` +
          `peers ${r.peerCores!.toFixed(2)} (${r.peerCpuMsPerTicket!.toFixed(2)} ms/ticket), ` +
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

    await row("real", async () => {
      const runId = randomBytes(3).toString("hex")
      const ids = Array.from({ length: options.peers }, (_, i) => `real-${runId}-${i}`)
      // Started one after another: startup costs are not what is measured.
      for (const id of ids) peers.push(await withTimeout(startPeer(c, id, join(dir, id)), 60_000, () => id))
      const server = startProcessSampler(serverPid)
      const peerCpu = startTreeSampler(peers.map((p) => p.pid!))
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
        machineCores: machine.stop().meanCores,
        loadAvg1,
      }
    })
    // Out of the way of the simulated row.
    await Promise.all(peers.map((p) => stopProcess(p, 5_000)))

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
    await Promise.all(peers.map((p) => stopProcess(p, 5_000)))
    await cluster?.stop().catch((e: unknown) => console.log(`${label} teardown failed: ${String(e)}`))
    rmSync(dir, { recursive: true, force: true })
    await sleep(500)
  }
  return results
}
