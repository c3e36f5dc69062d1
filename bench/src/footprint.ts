import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { arch, tmpdir } from "node:os"
import { join } from "node:path"
import { wallNow } from "./clock.ts"
import { stopProcess } from "./processes.ts"
import { readProcess } from "./procstat.ts"
import { type Cluster, startCluster, withTimeout } from "./storm.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Footprint: one idle peer (heartbeats only) on a server, measured as anyone can repeat it: VmRSS
 * from /proc/<pid>/status (and Pss from smaps_rollup), and utime + stime of /proc/<pid>/stat read
 * `idleMs` apart, after the peer registered and settled. The packaged peer (`./picus package`, a
 * single executable) beside the peer run from the sources with node, as before packaging.
 *
 * The executable starts from disk, as after a boot: its pages are dropped from the page cache
 * first. Just written by postject (one write of the whole file), the kernel caches it in large
 * folios and a page fault maps a whole folio, so a process started from that cache shows about
 * 16 MiB more RSS of the binary's clean, shared pages; a copy made by cp or dpkg does not.
 */

const repo = join(import.meta.dirname, "..", "..")
const sourcePeer = join(repo, "packages", "peer", "src", "main.ts")

export interface FootprintRow {
  readonly kind: "packaged" | "source"
  /** From spawn to the peer's "registered as" line. */
  readonly registeredMs?: number
  /** From spawn to the exit of `--version`: the start alone. */
  readonly versionMs?: number
  readonly rssBytes?: number
  readonly pssBytes?: number
  readonly rssPeakBytes?: number
  readonly cores?: number
  readonly error?: string
}

export interface FootprintResult {
  readonly idleMs: number
  readonly executable?: string
  readonly rows: ReadonlyArray<FootprintRow>
  readonly error?: string
}

const pssOf = (pid: number): number | undefined => {
  try {
    const kb = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, "utf8"))?.[1]
    return kb === undefined ? undefined : Number(kb) * 1024
  } catch {
    return undefined
  }
}
const peakRssOf = (pid: number): number =>
  Number(/^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) * 1024

/** The packaged peer of this machine's architecture: BENCH_PEER_EXECUTABLE, or built into `dir`. */
export const packagedPeer = (dir: string): string => {
  const given = process.env.BENCH_PEER_EXECUTABLE
  if (given !== undefined && given !== "") return given
  const a = arch() === "arm64" ? "arm64" : "x64"
  execFileSync(join(repo, "picus"), ["package", "--arch", a, "--out", dir], {
    stdio: ["ignore", "ignore", "inherit"],
  })
  const file = join(dir, `picus-peer-linux-${a}`)
  if (!existsSync(file)) throw new Error(`./picus package made no ${file}`)
  return file
}

/** Drops `file` from the page cache (GNU dd's documented way); best effort. */
const dropFromPageCache = (file: string): void => {
  try {
    execFileSync("dd", [`of=${file}`, "oflag=nocache", "conv=notrunc,fdatasync", "count=0"], {
      stdio: "ignore",
    })
  } catch {
    // Measured warm, then: no worse than before.
  }
}

const timeVersion = (command: string, args: ReadonlyArray<string>): number => {
  const startedAt = wallNow()
  execFileSync(command, [...args, "--version"], { stdio: "ignore" })
  return wallNow() - startedAt
}

const startIdlePeer = (
  cluster: Cluster,
  command: string,
  args: ReadonlyArray<string>,
  peerId: string,
  stateDir: string,
): Promise<{ child: ChildProcess; registeredMs: number }> =>
  new Promise((resolve, reject) => {
    const startedAt = wallNow()
    const child = spawn(command, [...args, "--peer-id", peerId, "--state-dir", stateDir], {
      env: {
        PATH: process.env.PATH ?? "",
        HOME: stateDir,
        PICUS_TOKEN: cluster.token,
        PICUS_CLUSTER_PUBLIC_KEY: cluster.clusterPublicKey,
        REDIS_URL: cluster.redisUrl,
        PICUS_REDIS_PREFIX: cluster.prefix,
      },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let output = ""
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000)
      if (/registered as/.test(output)) resolve({ child, registeredMs: wallNow() - startedAt })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => reject(new Error(`peer exited (${code}) before registering:\n${output}`)))
  })

const measure = async (
  cluster: Cluster,
  kind: FootprintRow["kind"],
  command: string,
  args: ReadonlyArray<string>,
  dir: string,
  idleMs: number,
): Promise<FootprintRow> => {
  let child: ChildProcess | undefined
  try {
    if (kind === "packaged") dropFromPageCache(command)
    const versionMs = timeVersion(command, args)
    const started = await withTimeout(
      startIdlePeer(cluster, command, args, `footprint-${kind}`, join(dir, kind)),
      60_000,
      () => kind,
    )
    child = started.child
    const pid = child.pid!
    // Settled: the start's garbage collected, the first heartbeats sent.
    await new Promise((r) => setTimeout(r, 5_000))
    const first = readProcess(pid)
    const startedAt = wallNow()
    await new Promise((r) => setTimeout(r, idleMs))
    const last = readProcess(pid)
    const pss = pssOf(pid)
    return {
      kind,
      registeredMs: started.registeredMs,
      versionMs,
      rssBytes: last.rssBytes,
      ...(pss === undefined ? {} : { pssBytes: pss }),
      rssPeakBytes: peakRssOf(pid),
      cores: (last.cpuMs - first.cpuMs) / (wallNow() - startedAt),
    }
  } catch (error) {
    return { kind, error: error instanceof Error ? error.message : String(error) }
  } finally {
    if (child !== undefined) await stopProcess(child)
  }
}

export const runFootprint = async (
  env: BenchEnv,
  options: { readonly idleMs: number },
): Promise<FootprintResult> => {
  const dir = mkdtempSync(join(tmpdir(), "bench-footprint-"))
  let cluster: Cluster | undefined
  try {
    const executable = packagedPeer(dir)
    cluster = await startCluster(env, "footprint", 1)
    const rows = [
      await measure(cluster, "packaged", executable, [], dir, options.idleMs),
      await measure(cluster, "source", process.execPath, [sourcePeer], dir, options.idleMs),
    ]
    return { idleMs: options.idleMs, executable, rows }
  } catch (error) {
    return { idleMs: options.idleMs, rows: [], error: error instanceof Error ? error.message : String(error) }
  } finally {
    await cluster?.stop().catch(() => {})
    rmSync(dir, { recursive: true, force: true })
  }
}
