import type { StatementCounts } from "server"

/**
 * The measured window of a run: the system calls `begin` once it is ready, right before its first
 * ticket, and `end` once the last result is committed, before anything else it does. The costs of a
 * run (counts.ts) are counted between the two.
 */
export interface MeasuredWindow {
  readonly begin: () => Promise<void>
  readonly end: () => Promise<void>
}

/** What a system tells of itself at each edge of the measured window (cumulative readings). */
export interface SystemCounters {
  /** The run's database, whose PostgreSQL statistics are read. */
  readonly databaseUrl: string
  /** CPU time so far of the system's server processes (picus), in ms. */
  readonly serverCpuMs?: number
  /** Statements counted in the pools of the system's server processes (picus). */
  readonly serverStatements?: StatementCounts
  /** Statements counted in this process's pools for the system (the baselines' workers, picus's submitter). */
  readonly benchStatements?: StatementCounts
  /** Statements the harness itself sent to the run's database (polls, flushes): taken out of its transactions. */
  readonly harnessStatements: number
  /**
   * Whether every connection to the run's database has just published its statistics
   * (pg_stat_force_next_flush); if not, the bench waits for them.
   */
  readonly pgStatsFlushed: boolean
}

/**
 * What every benchmarked system implements. main.ts creates one instance per run, calls setup, exactly
 * one of saturation / atRate, then teardown (always, even after a failure).
 */
export interface BenchSystem {
  /** "bullmq", "bullmq-batched", "streams-ceiling", "picus-1", ... */
  readonly name: string
  /** Fresh state for one run: a new PostgreSQL database, a new Redis key prefix / queue name, connections. */
  readonly setup: () => Promise<void>
  /** Submit `tickets` as fast as possible over `workers` workers and wait until every result is committed. */
  readonly saturation: (tickets: number, workers: number, window?: MeasuredWindow) => Promise<RunResult>
  /**
   * Submit `ratePerSecond` tickets/s for `warmupMs` and wait for their results (not counted, outside
   * the window: fresh connections, plans and compiled code are a start's cost, not the rate's), then
   * the same for `durationMs`, counted.
   */
  readonly atRate: (
    ratePerSecond: number,
    durationMs: number,
    workers: number,
    window?: MeasuredWindow,
    warmupMs?: number,
  ) => Promise<RunResult>
  /** Its counters now, read at the edges of the measured window; without it, no costs are counted. */
  readonly counters?: () => Promise<SystemCounters>
  /** Drop the database, delete the keys, close every connection. Safe to call after a failed setup. */
  readonly teardown: () => Promise<void>
}

export interface LatencySummary {
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

export interface RunResult {
  readonly system: string
  readonly mode: "saturation" | "rate"
  /** Tickets/s asked for (rate runs only). */
  readonly targetRate?: number
  /** Tickets submitted, each with exactly one committed result row (checked by a count in PostgreSQL). */
  readonly tickets: number
  /** From the first ticket's creation to the last result's commit, in ms. */
  readonly durationMs: number
  /** tickets / durationMs, in tickets/s. */
  readonly throughput: number
  /** committed - created per ticket, wall clock, in ms. */
  readonly latencyMs: LatencySummary
  /** Jobs or writes that failed along the way (a run with missing results throws instead). */
  readonly errors: number
}

/** Where the shared services are. Each system makes its own database and key prefix from these. */
export interface BenchEnv {
  /** An administrative database URL; systems create and drop their own database next to it. */
  readonly pgAdminUrl: string
  readonly redisUrl: string
}

/** One entry of main.ts's list of systems. */
export interface SystemEntry {
  readonly name: string
  readonly create: (env: BenchEnv) => BenchSystem
}
