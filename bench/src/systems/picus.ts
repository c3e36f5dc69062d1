import type { ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import { type Stores, type Transport, TransportRedis, Trust } from "@picus/core"
import { type Context, Effect, Exit, Layer, Scope } from "effect"
import { makeSimulatedFleet, type SimulatedFleet } from "loadgen"
import pg from "pg"
import { PgStore, statementCounts, submitJobs } from "server"
import { sleep } from "../clock.ts"
import { addStatements, noStatements } from "../counts.ts"
import { submitAtRate } from "../pace.ts"
import { countQueries, StatementTally } from "../pg.ts"
import { dropRun, requestCounters, startServer, stopProcess } from "../processes.ts"
import { readProcess, type Sampler, startProcessSampler } from "../procstat.ts"
import { percentiles } from "../stats.ts"
import type { BenchEnv, BenchSystem, MeasuredWindow, RunResult, SystemEntry } from "../system.ts"

/**
 * This system, as an operator runs it: `instances` real server processes (`./picus server`)
 * on one Redis and one PostgreSQL, and `workers` simulated peers (the load generator's fleet, real
 * protocol peers over Redis that answer jobs in-process). Tickets are submitted the way an
 * operator's tool does (`submitJobs`: written to PostgreSQL, then the holding instance told).
 * Times are PostgreSQL's: a ticket's created_at and its result's received_at, both written before
 * anything is acknowledged.
 */

const TOKEN = `bench-${randomBytes(8).toString("hex")}`

const makeSystem = (env: BenchEnv, instances: number): BenchSystem => {
  const name = `picus-${instances}`
  const dbName = `bench_picus_${randomBytes(4).toString("hex")}`
  const dbUrl = (() => {
    const url = new URL(env.pgAdminUrl)
    url.pathname = `/${dbName}`
    return url.toString()
  })()
  const prefix = `bench-picus-${randomBytes(4).toString("hex")}`
  const servers: Array<ChildProcess> = []
  let scope: Scope.Closeable | undefined
  let context: Context.Context<Stores | Transport> | undefined
  let fleet: SimulatedFleet | undefined
  let pool: pg.Pool | undefined
  /** The harness's own queries of the run's database (polling for results). */
  const harness = new StatementTally()
  let sampler: Sampler | undefined
  let errors = 0

  const run = <A, E>(effect: Effect.Effect<A, E, Stores | Transport>): Promise<A> =>
    Effect.runPromise(effect.pipe(Effect.provideContext(context!)))

  const setup = async (): Promise<void> => {
    const serverEnv = {
      DATABASE_URL: dbUrl,
      REDIS_URL: env.redisUrl,
      PICUS_REDIS_PREFIX: prefix,
      PICUS_TOKENS: TOKEN,
      // One cluster key for the run's instances: each checks the sessions of the others.
      PICUS_CLUSTER_KEY: Trust.newPrivateKey(),
    }
    // One first, so it creates and migrates the database alone.
    servers.push(await startServer(`${name}-a`, serverEnv))
    for (let i = 1; i < instances; i++) servers.push(await startServer(`${name}-${i}`, serverEnv))
    pool = new pg.Pool({ connectionString: dbUrl, max: 2 })
    countQueries(pool, harness)
    // Dropping the database at teardown ends idle connections: not an error of the run.
    pool.on("error", () => {})
    scope = Effect.runSync(Scope.make())
    context = await Effect.runPromise(
      Layer.buildWithScope(
        Layer.mergeAll(
          PgStore.layer(dbUrl, { migrate: false, maxPoolSize: 8 }),
          TransportRedis.layerRedis({ url: env.redisUrl, prefix }),
        ),
        scope,
      ),
    )
  }

  /** The fleet is made on first use: only then is the number of workers known. */
  const fleetOf = async (workers: number): Promise<SimulatedFleet> => {
    if (fleet) return fleet
    fleet = await Effect.runPromise(
      makeSimulatedFleet({
        peers: workers,
        runId: randomBytes(3).toString("hex"),
        token: TOKEN,
        serverIp: "127.0.0.1",
        os: undefined,
        agentVersion: "bench",
        sealed: true,
        jobMs: 0,
        rampMs: 0,
        registerTimeoutMs: 30_000,
        reconnectBaseMs: 1_000,
        reconnectMaxMs: 30_000,
      }).pipe(Scope.provide(scope!), Effect.provideContext(context!)),
    )
    await Effect.runPromise(fleet.allAccepted)
    return fleet
  }

  const submit = (peerId: string, count: number) =>
    run(
      submitJobs({
        peerId,
        submittedBy: "bench",
        jobs: Array.from({ length: count }, () => ({ name: "bench", command: "echo hi", timeoutMs: 10_000 })),
      }),
    ).then(
      () => {},
      () => {
        errors += count
      },
    )

  /** Results committed so far (a warm-up's), and PostgreSQL's time once they are all in. */
  let before = { results: 0, at: "-infinity" }
  const results = async () =>
    (await pool!.query<{ n: number }>("select count(*)::int as n from job_results")).rows[0]!.n

  /** Waits until every ticket has its result, then reads the timings from PostgreSQL. */
  const measure = async (
    mode: "saturation" | "rate",
    tickets: number,
    targetRate: number | undefined,
    window: MeasuredWindow | undefined,
  ): Promise<RunResult> => {
    while ((await results()) < before.results + tickets) await sleep(50)
    await window?.end()
    const { rows } = await pool!.query<{
      latency: number
      created: number
      received: number
      toPeer: number | null
      back: number | null
    }>(
      `
      select extract(epoch from r.received_at - t.created_at) * 1000 as latency,
        extract(epoch from t.created_at) * 1000 as created, extract(epoch from r.received_at) * 1000 as received,
        extract(epoch from r.started_at - t.created_at) * 1000 as "toPeer",
        extract(epoch from r.received_at - r.started_at) * 1000 as "back"
      from job_results r join tickets t using (ticket) where t.created_at > $1::timestamptz`,
      [before.at],
    )
    if (rows.length !== tickets) throw new Error(`${name}: ${rows.length} results for ${tickets} tickets`)
    const latencies = rows.map((r) => Number(r.latency))
    // Where a ticket's time went: created -> the simulated peer has its job (its started_at, this
    // process's clock) -> its result's statement begins. The machine's one clock serves both.
    const stage = (values: ReadonlyArray<number | null>) => {
      const [a, b] = percentiles(values.filter((v) => v !== null).map(Number), [50, 99])
      return `p50 ${a!.toFixed(1)} / p99 ${b!.toFixed(1)} ms`
    }
    console.log(
      `    ${name} stages: created -> at the peer ${stage(rows.map((r) => r.toPeer))}; ` +
        `at the peer -> result recorded ${stage(rows.map((r) => r.back))}`,
    )
    const first = Math.min(...rows.map((r) => Number(r.created)))
    const last = Math.max(...rows.map((r) => Number(r.received)))
    const [p50, p95, p99, max] = percentiles(latencies, [50, 95, 99, 100])
    const durationMs = last - first
    const cpu = sampler?.stop()
    if (cpu)
      console.log(
        `    ${name} servers: ${cpu.meanCores.toFixed(2)} cores, peak RSS ${(cpu.maxRssBytes / 2 ** 20).toFixed(0)} MiB`,
      )
    return {
      system: name,
      mode,
      ...(targetRate === undefined ? {} : { targetRate }),
      tickets,
      durationMs,
      throughput: (tickets * 1000) / durationMs,
      latencyMs: { p50: p50!, p95: p95!, p99: p99!, max: max! },
      errors,
    }
  }

  return {
    name,
    setup,
    saturation: async (tickets, workers, window) => {
      const f = await fleetOf(workers)
      const peers = f.peerIds
      await window?.begin()
      sampler = startProcessSampler(servers.map((s) => s.pid!))
      // As a batch per peer, the way the baselines add theirs in bulk.
      await Promise.all(
        peers.map((peerId, i) => {
          const count = Math.floor(tickets / peers.length) + (i < tickets % peers.length ? 1 : 0)
          return count > 0 ? submit(peerId, count) : Promise.resolve()
        }),
      )
      return measure("saturation", tickets, undefined, window)
    },
    atRate: async (rate, durationMs, workers, window, warmupMs = 0) => {
      const f = await fleetOf(workers)
      let next = 0
      // One submission per ticket, those due together side by side, as BullMQ's adds are.
      const atRate = (ms: number) =>
        submitAtRate(rate, ms, async (_first, count) => {
          await Promise.all(
            Array.from({ length: count }, () => submit(f.peerIds[next++ % f.peerIds.length]!, 1)),
          )
        })
      if (warmupMs > 0) {
        const warm = await atRate(warmupMs)
        while ((await results()) < warm) await sleep(50)
        const { rows } = await pool!.query<{ at: string }>("select now()::text as at")
        before = { results: warm, at: rows[0]!.at }
      }
      await window?.begin()
      sampler = startProcessSampler(servers.map((s) => s.pid!))
      const total = await atRate(durationMs)
      return measure("rate", total, rate, window)
    },
    counters: async () => {
      const serverCpuMs = servers.reduce((ms, s) => ms + readProcess(s.pid!).cpuMs, 0)
      const counts = await Promise.all(servers.map((s) => requestCounters(s)))
      return {
        databaseUrl: dbUrl,
        serverCpuMs,
        serverStatements: counts.reduce(addStatements, noStatements),
        // The submitter's pool (PgStore) counts into this process's metrics.
        benchStatements: Effect.runSync(statementCounts),
        harnessStatements: harness.statements,
        // The servers' connections publish their statistics when PostgreSQL lets them.
        pgStatsFlushed: false,
      }
    },
    teardown: async () => {
      if (fleet) await Effect.runPromise(fleet.stop("peer_shutdown", 2_000)).catch(() => {})
      await Promise.all(servers.map((s) => stopProcess(s)))
      if (scope) await Effect.runPromise(Scope.close(scope, Exit.void))
      await pool?.end().catch(() => {})
      await dropRun(env, dbName, prefix)
    },
  }
}

export const picus1: SystemEntry = { name: "picus-1", create: (env) => makeSystem(env, 1) }
export const picus2: SystemEntry = { name: "picus-2", create: (env) => makeSystem(env, 2) }
