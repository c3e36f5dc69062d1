import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Trust } from "@picus/core"
import pg from "pg"
import { describe, expect, it } from "vitest"
import {
  costPerTicket,
  makeCostWindow,
  parseCommandStats,
  parseCountersLine,
  parseInfo,
  parseNetDev,
  subtractStatements,
} from "../src/counts.ts"
import { countQueries, StatementTally } from "../src/pg.ts"
import { dropRun, requestCounters, startServer, stopProcess } from "../src/processes.ts"
import { summarize, writeReport } from "../src/report.ts"
import { streamsCeiling } from "../src/systems/streamsCeiling.ts"

const env = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}

// As Redis 7 sends it: CRLF, section headers, subcommands.
const info = [
  "# Commandstats",
  "cmdstat_xadd:calls=129737,usec=289592,usec_per_call=2.23,rejected_calls=0,failed_calls=0",
  "cmdstat_client|setname:calls=16,usec=62,usec_per_call=3.88,rejected_calls=0,failed_calls=0",
  "cmdstat_evalsha:calls=7,usec=700,usec_per_call=100.00,rejected_calls=1,failed_calls=2",
  "",
  "# Stats",
  "total_connections_received:42",
  "total_net_input_bytes:123456789",
  "total_net_output_bytes:987654",
  "",
  "# CPU",
  "used_cpu_sys:12.500000",
  "used_cpu_user:3.250000",
  "",
].join("\r\n")

describe("parsing what Redis, Linux and the server report", () => {
  it("reads INFO commandstats: calls and µs per command, subcommands included", () => {
    expect(parseCommandStats(info)).toEqual({
      xadd: { calls: 129737, usec: 289592 },
      "client|setname": { calls: 16, usec: 62 },
      evalsha: { calls: 7, usec: 700 },
    })
  })

  it("reads INFO fields of every section, without the CR", () => {
    const fields = parseInfo(info)
    expect(fields.get("total_net_input_bytes")).toBe("123456789")
    expect(fields.get("used_cpu_user")).toBe("3.250000")
    expect(fields.has("# Stats")).toBe(false)
  })

  it("reads one interface of /proc/net/dev: received bytes first, sent bytes ninth", () => {
    const netDev = [
      "Inter-|   Receive                                                |  Transmit",
      " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed",
      "    lo: 344705438  428587    0    0    0     0          0         0 344705431  428586    0    0    0     0       0          0",
      "  eth0:    1000       10    0    0    0     0          0         0     2000       20    0    0    0     0       0          0",
      "",
    ].join("\n")
    expect(parseNetDev(netDev, "lo")).toEqual({ rxBytes: 344705438, txBytes: 344705431 })
    expect(parseNetDev(netDev, "eth0")).toEqual({ rxBytes: 1000, txBytes: 2000 })
    expect(parseNetDev(netDev, "eth1")).toBeUndefined()
  })

  it("reads the server's SIGUSR2 line, wherever it starts, and nothing else", () => {
    const counts = {
      statements: 12,
      transactions: 3,
      byStatement: { "insert peers": 2, "update tickets": 10 },
    }
    expect(parseCountersLine(`picus-counters ${JSON.stringify({ pg: counts })}`)).toEqual(counts)
    expect(parseCountersLine(`2026-12-01 [out] picus-counters ${JSON.stringify({ pg: counts })}`)).toEqual(
      counts,
    )
    expect(parseCountersLine("server picus-1-a serving (0 catalog jobs); Ctrl+C to stop")).toBeUndefined()
    expect(parseCountersLine("picus-counters {not json")).toBeUndefined()
    expect(parseCountersLine('picus-counters {"pg":{"statements":"12"}}')).toBeUndefined()
  })
})

describe("statement counts in the bench", () => {
  it("counts a pg Pool's queries by the server's statement names, text or config alike", async () => {
    const pool = new pg.Pool({ connectionString: env.pgAdminUrl, max: 1 })
    const tally = new StatementTally()
    countQueries(pool, tally)
    try {
      await pool.query("select 1 as one")
      await pool.query({ text: "select datname from pg_database where datname = $1", values: ["postgres"] })
      await pool.query("select datname from pg_database")
    } finally {
      await pool.end()
    }
    expect(tally.snapshot()).toEqual({
      statements: 3,
      transactions: 0,
      byStatement: { "select as one": 1, "select from pg_database": 2 },
    })
  })

  it("subtracts counts key by key, leaving out keys that did not move", () => {
    const before = { statements: 5, transactions: 1, byStatement: { a: 2, b: 3 } }
    const after = { statements: 9, transactions: 1, byStatement: { a: 2, b: 5, c: 2 } }
    expect(subtractStatements(after, before)).toEqual({
      statements: 4,
      transactions: 0,
      byStatement: { b: 2, c: 2 },
    })
  })
})

describe("a server's counters (SIGUSR2)", () => {
  it("are printed as one line on stdout, grow with its statements, and leave it serving", async () => {
    const dbName = `bench_counts_${randomBytes(4).toString("hex")}`
    const url = new URL(env.pgAdminUrl)
    url.pathname = `/${dbName}`
    const prefix = `bench-counts-${randomBytes(4).toString("hex")}`
    const server = await startServer("counts-test", {
      DATABASE_URL: url.toString(),
      REDIS_URL: env.redisUrl,
      PICUS_REDIS_PREFIX: prefix,
      PICUS_TOKENS: `t-${randomBytes(8).toString("hex")}`,
      PICUS_CLUSTER_KEY: Trust.newPrivateKey(),
    })
    try {
      const first = await requestCounters(server)
      // It created and migrated its database: statements and transactions, by name.
      expect(first.statements).toBeGreaterThan(0)
      expect(first.transactions).toBeGreaterThan(0)
      expect(Object.values(first.byStatement).reduce((a, b) => a + b, 0)).toBe(first.statements)
      const second = await requestCounters(server)
      expect(second.statements).toBeGreaterThanOrEqual(first.statements)
      expect(server.exitCode).toBeNull()
      expect(server.signalCode).toBeNull()
    } finally {
      await stopProcess(server)
      await dropRun(env, dbName, prefix)
    }
  }, 60_000)
})

describe("the cost window of a run", () => {
  it("counts a streams-ceiling run's rows and statements exactly, and at least its Redis commands", async () => {
    const system = streamsCeiling.create(env)
    const costs = makeCostWindow(env, system)
    const tickets = 300
    try {
      await system.setup()
      const result = await system.saturation(tickets, 10, costs.window)
      expect(result.tickets).toBe(tickets)
      const cost = costs.result()
      expect(cost).toBeDefined()
      const c = cost!
      // PostgreSQL's statistics are the run database's own: exact.
      expect(c.pg.tables.tickets).toMatchObject({ inserted: tickets, updated: 0 })
      expect(c.pg.tables.results).toMatchObject({ inserted: tickets, updated: 0 })
      expect(c.pg.tupInserted).toBe(2 * tickets)
      // One ticket insert per 500 tickets; results in batches.
      expect(c.pg.benchStatements.byStatement["insert tickets"]).toBe(1)
      expect(c.pg.benchStatements.byStatement["insert results"]).toBeGreaterThan(0)
      expect(c.pg.xactCommit).toBeGreaterThanOrEqual(c.pg.benchStatements.statements)
      expect(c.pg.statistics).toBe("flushed")
      // Redis may serve others meanwhile: at least a work entry and a result entry per ticket.
      expect(c.redis.commands.xadd?.calls ?? 0).toBeGreaterThanOrEqual(2 * tickets)
      expect(c.redis.commands.xack?.calls ?? 0).toBeGreaterThanOrEqual(tickets)
      expect(c.redis.calls).toBeGreaterThanOrEqual(3 * tickets)
      expect(c.redis.netInputBytes).toBeGreaterThan(0)
      expect(c.windowMs).toBeGreaterThan(0)
      const per = costPerTicket(tickets, c)
      expect(per.tuplesInserted).toBe(2)
      expect(per.serverCpuMs).toBeUndefined()

      // The summary has a row for it in "Cost per ticket", the raw counts go to report.json.
      const run = { ...result, repeat: 1, phase: "saturation", cost: c }
      expect(summarize([run])[0]?.costPerTicket?.tuplesInserted).toBe(2)
      const dir = mkdtempSync(join(tmpdir(), "bench-counts-"))
      const summary = writeReport(dir, {
        machine: { date: "d", hostname: "h", cpuModel: "c", cores: 2, node: "v24", platform: "linux" },
        options: {},
        systems: ["streams-ceiling"],
        runs: [run],
        failures: [],
        wallMs: 1,
      })
      expect(summary).toContain("## Cost per ticket")
      expect(summary).toMatch(/\| streams-ceiling \| saturation \| - \| [\d.]+ \|.* \| 2\.00 \| 0\.00 \|/)
      const report = JSON.parse(readFileSync(join(dir, "report.json"), "utf8"))
      expect(report.runs[0].cost.pg.tables.results.inserted).toBe(tickets)
      rmSync(dir, { recursive: true })
    } finally {
      await costs.close()
      await system.teardown()
    }
  }, 60_000)
})
