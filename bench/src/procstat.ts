import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { wallNow } from "./clock.ts"

/** Linux only: CPU time and memory of processes from /proc, and samplers over an interval. */

let clockTicks: number | undefined
/** Kernel clock ticks per second (USER_HZ), for /proc times; 100 on practically every Linux. */
const ticksPerSecond = (): number => {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
    } catch {
      clockTicks = 100
    }
  }
  return clockTicks
}

export interface ProcessSample {
  readonly pid: number
  /** User + system CPU time consumed so far, in ms. */
  readonly cpuMs: number
  /** Resident set size, in bytes. */
  readonly rssBytes: number
}

/**
 * CPU time and RSS of one process; throws if it does not exist. With `children`, the CPU time of the
 * children it has waited for counts too (cutime + cstime: a peer's shells, say).
 */
export const readProcess = (pid: number, options: { readonly children?: boolean } = {}): ProcessSample => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  // rest[0] is field 3 (state); utime, stime, cutime, cstime are fields 14 to 17.
  const ticks =
    Number(rest[11]) + Number(rest[12]) + (options.children ? Number(rest[13]) + Number(rest[14]) : 0)
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  const rssKb = Number(/^VmRSS:\s+(\d+)\s+kB/m.exec(status)?.[1] ?? 0)
  return { pid, cpuMs: (ticks * 1000) / ticksPerSecond(), rssBytes: rssKb * 1024 }
}

/** The live children of a process (of all its threads), from /proc/<pid>/task/<tid>/children. */
const childrenOf = (pid: number): number[] => {
  const pids: number[] = []
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      for (const child of readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").split(" "))
        if (child.trim() !== "") pids.push(Number(child))
  } catch {
    // gone meanwhile
  }
  return pids
}

/**
 * CPU ms of a process with all it started: the children it has waited for (cutime + cstime) and
 * those still alive, with theirs (a peer's job still running when it is read, say).
 */
export const treeCpuMs = (pid: number): number => {
  let ms = 0
  try {
    ms = readProcess(pid, { children: true }).cpuMs
  } catch {
    return 0
  }
  for (const child of childrenOf(pid)) ms += treeCpuMs(child)
  return ms
}

/** The pids whose command name (/proc/<pid>/comm) is `name`, e.g. "redis-server" or "postgres". */
export const pidsByName = (name: string): number[] => {
  const pids: number[] = []
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (readFileSync(`/proc/${entry}/comm`, "utf8").trim() === name) pids.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return pids
}

/** Busy and total CPU time of the whole machine so far (all cores), in ms, from /proc/stat. */
export const readMachineCpu = (): { busyMs: number; totalMs: number } => {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? ""
  const [, ...fields] = line.trim().split(/\s+/)
  const v = fields.map(Number)
  // user nice system idle iowait irq softirq steal (guest times are already in user/nice)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  const toMs = 1000 / ticksPerSecond()
  return { busyMs: (total - idle) * toMs, totalMs: total * toMs }
}

export interface CpuSummary {
  readonly wallMs: number
  /** CPU time used over the interval, in ms (summed over the sampled processes). */
  readonly cpuMs: number
  /** cpuMs / wallMs: mean number of cores busy. */
  readonly meanCores: number
  /** Largest summed RSS seen by the sampler, in bytes. */
  readonly maxRssBytes: number
}

export interface Sampler {
  readonly stop: () => CpuSummary
}

/**
 * Samples processes every `intervalMs` (for the peak RSS) and reports their CPU use between start
 * and stop. `pids` is re-evaluated at each sample when it is a function (for process trees that
 * change); a process that exits keeps the CPU time last seen for it.
 */
export const startProcessSampler = (
  pids: number | ReadonlyArray<number> | (() => ReadonlyArray<number>),
  intervalMs = 250,
): Sampler => {
  const list = (): ReadonlyArray<number> =>
    typeof pids === "function" ? pids() : typeof pids === "number" ? [pids] : pids
  const first = new Map<number, number>()
  const last = new Map<number, number>()
  let maxRss = 0
  const sample = (initial: boolean): void => {
    let rss = 0
    for (const pid of list()) {
      try {
        const s = readProcess(pid)
        if (initial || !first.has(pid)) first.set(pid, initial ? s.cpuMs : 0)
        last.set(pid, s.cpuMs)
        rss += s.rssBytes
      } catch {
        // exited: keep its last sample
      }
    }
    maxRss = Math.max(maxRss, rss)
  }
  const startedAt = wallNow()
  sample(true)
  const timer = setInterval(() => sample(false), intervalMs)
  timer.unref()
  return {
    stop: () => {
      clearInterval(timer)
      sample(false)
      const wallMs = wallNow() - startedAt
      let cpuMs = 0
      for (const [pid, end] of last) cpuMs += end - (first.get(pid) ?? 0)
      return { wallMs, cpuMs, meanCores: wallMs > 0 ? cpuMs / wallMs : 0, maxRssBytes: maxRss }
    },
  }
}

/** Mean busy cores of the whole machine between start and stop. */
export const startMachineSampler = (): { readonly stop: () => { wallMs: number; meanCores: number } } => {
  const startedAt = wallNow()
  const a = readMachineCpu()
  return {
    stop: () => {
      const b = readMachineCpu()
      const wallMs = wallNow() - startedAt
      return { wallMs, meanCores: wallMs > 0 ? (b.busyMs - a.busyMs) / wallMs : 0 }
    },
  }
}
