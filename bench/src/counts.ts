import { readFileSync } from "node:fs"
import { Redis } from "ioredis"
import pg from "pg"
import { COUNTERS_LINE_PREFIX, type StatementCounts } from "server"
import { sleep, wallNow } from "./clock.ts"
import { readMachineCpu, readProcess } from "./procstat.ts"
import type { BenchEnv, BenchSystem, MeasuredWindow, SystemCounters } from "./system.ts"

/**
 * What a run costs, counted over its measured window (first ticket submitted → last result
 * committed): CPU time, PostgreSQL statements, transactions and tuples, Redis commands and bytes,
 * loopback bytes. Counts do not drift with the machine's noise the way times do.
 */

// ---------------------------------------------------------------------------------------------
// Parsing

/** Redis `INFO` text (any sections) as field → value. */
export const parseInfo = (text: string): Map<string, string> => {
  const fields = new Map<string, string>()
  for (const raw of text.split("\n")) {
    const line = raw.trim()
    if (line === "" || line.startsWith("#")) continue
    const colon = line.indexOf(":")
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1))
  }
  return fields
}

export interface CommandStat {
  readonly calls: number
  /** Time Redis spent executing the command, in µs. */
  readonly usec: number
}

/** `INFO commandstats`: calls and µs per command ("xadd", "client|setname", ...). */
export const parseCommandStats = (text: string): Record<string, CommandStat> => {
  const out: Record<string, CommandStat> = {}
  for (const [field, value] of parseInfo(text)) {
    if (!field.startsWith("cmdstat_")) continue
    const parts = new Map(value.split(",").map((kv) => kv.split("=") as [string, string]))
    out[field.slice("cmdstat_".length)] = {
      calls: Number(parts.get("calls") ?? 0),
      usec: Number(parts.get("usec") ?? 0),
    }
  }
  return out
}

/** The received and sent bytes of one interface in /proc/net/dev, or undefined if absent. */
export const parseNetDev = (
  text: string,
  iface: string,
): { readonly rxBytes: number; readonly txBytes: number } | undefined => {
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":")
    if (colon < 0 || line.slice(0, colon).trim() !== iface) continue
    // rx: bytes packets errs drop fifo frame compressed multicast; then tx: bytes ...
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .map(Number)
    return { rxBytes: f[0] ?? 0, txBytes: f[8] ?? 0 }
  }
  return undefined
}

/** The counters a server prints on SIGUSR2 (`picus-counters {"pg": ...}`), or undefined for another line. */
export const parseCountersLine = (line: string): StatementCounts | undefined => {
  const at = line.indexOf(COUNTERS_LINE_PREFIX)
  if (at < 0) return undefined
  try {
    const parsed = JSON.parse(line.slice(at + COUNTERS_LINE_PREFIX.length)) as {
      pg?: Partial<StatementCounts>
    }
    const c = parsed.pg
    if (typeof c?.statements !== "number" || typeof c.transactions !== "number") return undefined
    return { statements: c.statements, transactions: c.transactions, byStatement: { ...c.byStatement } }
  } catch {
    return undefined
  }
}

// ---------------------------------------------------------------------------------------------
// Arithmetic of statement counts

export const noStatements: StatementCounts = { statements: 0, transactions: 0, byStatement: {} }

export const addStatements = (a: StatementCounts, b: StatementCounts): StatementCounts => {
  const byStatement: Record<string, number> = { ...a.byStatement }
  for (const [k, n] of Object.entries(b.byStatement)) byStatement[k] = (byStatement[k] ?? 0) + n
  return {
    statements: a.statements + b.statements,
    transactions: a.transactions + b.transactions,
    byStatement,
  }
}

/** after − before, keys that did not move left out. */
export const subtractStatements = (after: StatementCounts, before: StatementCounts): StatementCounts => {
  const byStatement: Record<string, number> = {}
  for (const [k, n] of Object.entries(after.byStatement)) {
    const d = n - (before.byStatement[k] ?? 0)
    if (d !== 0) byStatement[k] = d
  }
  return {
    statements: after.statements - before.statements,
    transactions: after.transactions - before.transactions,
    byStatement,
  }
}

/** Round trips to PostgreSQL: each statement, and the begin and commit of each explicit transaction. */
export const roundTrips = (c: StatementCounts): number => c.statements + 2 * c.transactions

// ---------------------------------------------------------------------------------------------
// Readings

interface RedisReading {
  readonly commands: Record<string, CommandStat>
  readonly netInputBytes: number
  readonly netOutputBytes: number
  /** used_cpu_sys + used_cpu_user of the Redis process, in ms. */
  readonly cpuMs: number
  /** Size of this reading's own reply: it is sent after the counters were taken. */
  readonly replyBytes: number
}

const readRedis = async (redis: Redis): Promise<RedisReading> => {
  const text = String(await redis.call("INFO", "commandstats", "stats", "cpu"))
  const info = parseInfo(text)
  const num = (k: string): number => Number(info.get(k) ?? 0)
  return {
    commands: parseCommandStats(text),
    netInputBytes: num("total_net_input_bytes"),
    netOutputBytes: num("total_net_output_bytes"),
    cpuMs: (num("used_cpu_sys") + num("used_cpu_user")) * 1000,
    replyBytes: Buffer.byteLength(text),
  }
}

interface TableCounts {
  readonly inserted: number
  readonly updated: number
  readonly hotUpdated: number
  readonly deleted: number
}

interface PgReading {
  readonly xactCommit: number
  readonly xactRollback: number
  readonly tupInserted: number
  readonly tupUpdated: number
  readonly tupDeleted: number
  readonly tables: Record<string, TableCounts>
}

const withClient = async <A>(url: string, run: (c: pg.Client) => Promise<A>): Promise<A> => {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await run(client)
  } finally {
    await client.end()
  }
}

const databaseName = (databaseUrl: string): string =>
  decodeURIComponent(new URL(databaseUrl).pathname.slice(1))

/**
 * PostgreSQL's statistics of the run's database: the database's counters first (through the admin
 * database), then its tables (one short connection to it, whose transaction shows in the next
 * reading: exactly one per window, taken out).
 */
const readPg = async (adminUrl: string, databaseUrl: string): Promise<PgReading> => {
  const row = await withClient(adminUrl, async (c) => {
    const { rows } = await c.query<Record<string, string>>(
      "select xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted " +
        "from pg_stat_database where datname = $1",
      [databaseName(databaseUrl)],
    )
    return rows[0] ?? {}
  })
  return {
    xactCommit: Number(row.xact_commit ?? 0),
    xactRollback: Number(row.xact_rollback ?? 0),
    tupInserted: Number(row.tup_inserted ?? 0),
    tupUpdated: Number(row.tup_updated ?? 0),
    tupDeleted: Number(row.tup_deleted ?? 0),
    tables: await readTables(databaseUrl),
  }
}

/** CPU time so far of each backend connected to the run's database, in ms. */
const readBackendsCpu = (adminUrl: string, databaseUrl: string): Promise<ReadonlyMap<number, number>> =>
  withClient(adminUrl, async (c) => {
    const { rows } = await c.query<{ pid: number }>("select pid from pg_stat_activity where datname = $1", [
      databaseName(databaseUrl),
    ])
    const cpu = new Map<number, number>()
    for (const { pid } of rows) {
      try {
        cpu.set(pid, readProcess(pid).cpuMs)
      } catch {
        // gone, or PostgreSQL runs elsewhere: its CPU is not counted
      }
    }
    return cpu
  })

const readTables = (databaseUrl: string): Promise<Record<string, TableCounts>> =>
  withClient(databaseUrl, async (c) => {
    const { rows } = await c.query<{ relname: string; ins: string; upd: string; hot: string; del: string }>(
      "select relname, n_tup_ins as ins, n_tup_upd as upd, n_tup_hot_upd as hot, n_tup_del as del " +
        "from pg_stat_user_tables",
    )
    const tables: Record<string, TableCounts> = {}
    for (const r of rows)
      tables[r.relname] = {
        inserted: Number(r.ins),
        updated: Number(r.upd),
        hotUpdated: Number(r.hot),
        deleted: Number(r.del),
      }
    return tables
  })

const readLoopbackBytes = (): number => {
  try {
    return parseNetDev(readFileSync("/proc/net/dev", "utf8"), "lo")?.rxBytes ?? 0
  } catch {
    return 0
  }
}

interface Edge {
  readonly at: number
  readonly machineBusyMs: number
  readonly benchCpuMs: number
  readonly loopbackBytes: number
  readonly redis: RedisReading
  readonly pgBackendsCpuMs: ReadonlyMap<number, number>
  readonly system: SystemCounters
  readonly pg: PgReading
  /** Statements counted between the end of the window and the reading of PostgreSQL's statistics. */
  readonly statementsAfter?: number
}

/** Every statement a system's counters hold: its servers', this process's and the harness's. */
const statementsOf = (c: SystemCounters): number =>
  (c.serverStatements?.statements ?? 0) + (c.benchStatements?.statements ?? 0) + c.harnessStatements

// ---------------------------------------------------------------------------------------------
// The measured window

/** Raw counts over one run's measured window (report.json); per ticket in summary.md. */
export interface CostCounts {
  readonly windowMs: number
  /** CPU time used over the window, in ms. */
  readonly cpuMs: {
    /** The whole machine (all processes: the system, the bench, PostgreSQL, Redis, anything else). */
    readonly machine: number
    /** This process: the baselines' workers and producer; picus's simulated peers and submitter. */
    readonly benchProcess: number
    /** picus: its server processes. */
    readonly servers?: number
    /** The Redis server process (INFO cpu). */
    readonly redis: number
    /** PostgreSQL backends connected to the run's database (one that ends within the window is missed). */
    readonly pgBackends: number
  }
  readonly pg: {
    /** picus: counted in the servers' pools (SIGUSR2). */
    readonly serverStatements?: StatementCounts
    /** Counted in this process's pools for the system: the baselines' workers, picus's submitter. */
    readonly benchStatements: StatementCounts
    /**
     * From pg_stat_database, the bench's own reads and polls taken out, and the statements the
     * system was counted sending between the window's end and the reading (one transaction each).
     */
    readonly xactCommit: number
    readonly statementsAfterWindow: number
    readonly xactRollback: number
    readonly tupInserted: number
    readonly tupUpdated: number
    readonly tupDeleted: number
    /** pg_stat_user_tables, tables that moved. */
    readonly tables: Record<string, TableCounts>
    /** "flushed": every connection published its statistics at the edges; "waited": the bench waited this long instead. */
    readonly statistics: "flushed" | { readonly waitedMs: number }
  }
  readonly redis: {
    /** Every command Redis ran, those run inside Lua scripts included (Redis counts them too). */
    readonly calls: number
    /** Of which script calls (EVAL, EVALSHA, FCALL and their read-only forms). */
    readonly scripts: number
    /** Per command, those called in the window (a script's usec include its commands'). */
    readonly commands: Record<string, CommandStat>
    readonly netInputBytes: number
    readonly netOutputBytes: number
  }
  /** Bytes over the loopback interface (received = sent): PostgreSQL, Redis, everything local, anyone's. */
  readonly loopbackBytes: number
}

/**
 * PostgreSQL publishes a backend's statistics at most once a second, and an idle backend's 10 s
 * after it went idle: a connection the bench cannot make publish (a server's) has published all it
 * did before a moment once this long has passed since.
 */
const PG_STATS_WAIT_MS = 10_500

const SCRIPT = /^(eval|evalsha|fcall)(_ro)?$/

export interface CostWindow {
  readonly window: MeasuredWindow
  /** The counts, once the system has begun and ended the window; undefined otherwise. */
  readonly result: () => CostCounts | undefined
  readonly close: () => Promise<void>
}

/** A window for one run of `system`, which calls begin and end around what it measures. */
export const makeCostWindow = (env: BenchEnv, system: BenchSystem): CostWindow => {
  let redis: Redis | undefined
  let first: Edge | undefined
  let last: Edge | undefined

  /** The readings that take milliseconds, taken right at the edge. */
  const fast = async (databaseUrl: string) => {
    redis ??= new Redis(env.redisUrl, { maxRetriesPerRequest: 3 })
    const at = wallNow()
    const machineBusyMs = readMachineCpu().busyMs
    const benchCpuMs = readProcess(process.pid).cpuMs
    const loopbackBytes = readLoopbackBytes()
    const redisReading = await readRedis(redis)
    const pgBackendsCpuMs = await readBackendsCpu(env.pgAdminUrl, databaseUrl)
    return { at, machineBusyMs, benchCpuMs, loopbackBytes, redis: redisReading, pgBackendsCpuMs }
  }

  const window: MeasuredWindow = {
    begin: async () => {
      if (system.counters === undefined) return
      let counters = await system.counters()
      let pgReading: PgReading
      if (counters.pgStatsFlushed) pgReading = await readPg(env.pgAdminUrl, counters.databaseUrl)
      else {
        // What the system did before (set-up, logins) must be published before it is read.
        await sleep(PG_STATS_WAIT_MS)
        pgReading = await readPg(env.pgAdminUrl, counters.databaseUrl)
        counters = await system.counters()
      }
      first = { ...(await fast(counters.databaseUrl)), system: counters, pg: pgReading }
    },
    end: async () => {
      if (system.counters === undefined || first === undefined) return
      const f = await fast(first.system.databaseUrl)
      const counters = await system.counters()
      let statementsAfter = 0
      if (!counters.pgStatsFlushed) {
        await sleep(PG_STATS_WAIT_MS)
        // What the system went on doing meanwhile (lease renewals, say) is in the reading below.
        statementsAfter = statementsOf(await system.counters()) - statementsOf(counters)
      }
      last = {
        ...f,
        system: counters,
        pg: await readPg(env.pgAdminUrl, counters.databaseUrl),
        statementsAfter,
      }
    },
  }

  const result = (): CostCounts | undefined => {
    if (first === undefined || last === undefined) return undefined
    const a = first
    const b = last
    const commands: Record<string, CommandStat> = {}
    for (const [name, s] of Object.entries(b.redis.commands)) {
      const before = a.redis.commands[name] ?? { calls: 0, usec: 0 }
      // The reading at the window's start is itself an INFO counted after it.
      const own = name === "info" ? 1 : 0
      const calls = s.calls - before.calls - own
      if (calls > 0) commands[name] = { calls, usec: s.usec - before.usec }
    }
    const tables: Record<string, TableCounts> = {}
    for (const [name, t] of Object.entries(b.pg.tables)) {
      const o = a.pg.tables[name] ?? { inserted: 0, updated: 0, hotUpdated: 0, deleted: 0 }
      const d = {
        inserted: t.inserted - o.inserted,
        updated: t.updated - o.updated,
        hotUpdated: t.hotUpdated - o.hotUpdated,
        deleted: t.deleted - o.deleted,
      }
      if (d.inserted !== 0 || d.updated !== 0 || d.deleted !== 0) tables[name] = d
    }
    let pgBackends = 0
    for (const [pid, cpu] of b.pgBackendsCpuMs) pgBackends += cpu - (a.pgBackendsCpuMs.get(pid) ?? 0)
    // The bench's own statements to the run's database: its polls and flushes, and the first
    // reading's query of pg_stat_user_tables (the last reading's is not in it yet).
    const harness = b.system.harnessStatements - a.system.harnessStatements + 1
    const server =
      a.system.serverStatements !== undefined && b.system.serverStatements !== undefined
        ? subtractStatements(b.system.serverStatements, a.system.serverStatements)
        : undefined
    const servers =
      a.system.serverCpuMs !== undefined && b.system.serverCpuMs !== undefined
        ? b.system.serverCpuMs - a.system.serverCpuMs
        : undefined
    return {
      windowMs: b.at - a.at,
      cpuMs: {
        machine: b.machineBusyMs - a.machineBusyMs,
        benchProcess: b.benchCpuMs - a.benchCpuMs,
        ...(servers === undefined ? {} : { servers }),
        redis: b.redis.cpuMs - a.redis.cpuMs,
        pgBackends,
      },
      pg: {
        ...(server === undefined ? {} : { serverStatements: server }),
        benchStatements: subtractStatements(
          b.system.benchStatements ?? noStatements,
          a.system.benchStatements ?? noStatements,
        ),
        xactCommit: b.pg.xactCommit - a.pg.xactCommit - harness - (b.statementsAfter ?? 0),
        statementsAfterWindow: b.statementsAfter ?? 0,
        xactRollback: b.pg.xactRollback - a.pg.xactRollback,
        tupInserted: b.pg.tupInserted - a.pg.tupInserted,
        tupUpdated: b.pg.tupUpdated - a.pg.tupUpdated,
        tupDeleted: b.pg.tupDeleted - a.pg.tupDeleted,
        tables,
        statistics: b.system.pgStatsFlushed ? "flushed" : { waitedMs: PG_STATS_WAIT_MS },
      },
      redis: {
        calls: Object.values(commands).reduce((n, c) => n + c.calls, 0),
        scripts: Object.entries(commands).reduce((n, [k, c]) => n + (SCRIPT.test(k) ? c.calls : 0), 0),
        commands,
        // Less the first reading's own request (about 40 bytes) and reply, sent after it was taken.
        netInputBytes: b.redis.netInputBytes - a.redis.netInputBytes,
        netOutputBytes: b.redis.netOutputBytes - a.redis.netOutputBytes - a.redis.replyBytes,
      },
      loopbackBytes: b.loopbackBytes - a.loopbackBytes,
    }
  }

  return {
    window,
    result,
    close: async () => {
      redis?.disconnect()
      redis = undefined
    },
  }
}

// ---------------------------------------------------------------------------------------------
// Per ticket

/** The costs of one run divided by its tickets (what summary.md shows, medians over repeats). */
export interface CostPerTicket {
  readonly serverCpuMs?: number
  readonly benchCpuMs: number
  readonly machineCpuMs: number
  readonly redisCpuMs: number
  readonly pgCpuMs: number
  /** Round trips (statements, and begin and commit of explicit transactions) from the servers' pools. */
  readonly pgServerStatements?: number
  /** The same from this process's pools. */
  readonly pgBenchStatements: number
  readonly pgTransactions: number
  readonly tuplesInserted: number
  readonly tuplesUpdated: number
  readonly redisCommands: number
  readonly redisScripts: number
  readonly redisInBytes: number
  readonly redisOutBytes: number
  readonly loopbackBytes: number
}

export const costPerTicket = (tickets: number, c: CostCounts): CostPerTicket => {
  const per = (x: number): number => (tickets > 0 ? x / tickets : Number.NaN)
  return {
    ...(c.cpuMs.servers === undefined ? {} : { serverCpuMs: per(c.cpuMs.servers) }),
    benchCpuMs: per(c.cpuMs.benchProcess),
    machineCpuMs: per(c.cpuMs.machine),
    redisCpuMs: per(c.cpuMs.redis),
    pgCpuMs: per(c.cpuMs.pgBackends),
    ...(c.pg.serverStatements === undefined
      ? {}
      : { pgServerStatements: per(roundTrips(c.pg.serverStatements)) }),
    pgBenchStatements: per(roundTrips(c.pg.benchStatements)),
    pgTransactions: per(c.pg.xactCommit + c.pg.xactRollback),
    tuplesInserted: per(c.pg.tupInserted),
    tuplesUpdated: per(c.pg.tupUpdated),
    redisCommands: per(c.redis.calls),
    redisScripts: per(c.redis.scripts),
    redisInBytes: per(c.redis.netInputBytes),
    redisOutBytes: per(c.redis.netOutputBytes),
    loopbackBytes: per(c.loopbackBytes),
  }
}
