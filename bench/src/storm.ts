import type { ChildProcess } from "node:child_process"
import { randomBytes } from "node:crypto"
import { loadavg } from "node:os"
import { type Stores, type Transport, TransportRedis, Trust } from "@picus/core"
import { type Context, Effect, Exit, Layer, Scope } from "effect"
import { type Counters, makeSimulatedFleet, type SimulatedFleet } from "loadgen"
import pg from "pg"
import { PgStore } from "server"
import { sleep, wallNow } from "./clock.ts"
import { dropRun, startServer, stopProcess } from "./processes.ts"
import { type CpuSummary, startMachineSampler, startProcessSampler } from "./procstat.ts"
import type { BenchEnv } from "./system.ts"

/**
 * Registration storm: N simulated peers register at the same moment with one (then two) server
 * instances, then idle for a while, heartbeating. Shows how long a fleet takes to come back after
 * an outage, and what an idle fleet of that size costs the servers.
 */

// ---------------------------------------------------------------------------------------------
// A picus cluster as systems/picus.ts runs it (real server processes on a fresh database and key
// prefix, and a Store + Transport for the bench's own use). Also used by realPeers.ts.

export interface Cluster {
  readonly token: string
  /** The public key the servers sign with, for real peers to pin. */
  readonly clusterPublicKey: string
  readonly prefix: string
  readonly redisUrl: string
  /** The run's own database, for the operator's commands. */
  readonly databaseUrl: string
  readonly servers: ReadonlyArray<ChildProcess>
  readonly pool: pg.Pool
  readonly run: <A, E>(effect: Effect.Effect<A, E, Stores | Transport | Scope.Scope>) => Promise<A>
  readonly stop: () => Promise<void>
}

export const startCluster = async (
  env: BenchEnv,
  name: string,
  instances: number,
  extraEnv: Record<string, string> = {},
): Promise<Cluster> => {
  const dbName = `bench_${name.replace(/\W/g, "_")}_${randomBytes(4).toString("hex")}`
  const url = new URL(env.pgAdminUrl)
  url.pathname = `/${dbName}`
  const dbUrl = url.toString()
  const prefix = `bench-${name}-${randomBytes(4).toString("hex")}`
  const token = `bench-${randomBytes(8).toString("hex")}`
  const servers: ChildProcess[] = []
  let pool: pg.Pool | undefined
  let scope: Scope.Closeable | undefined

  const stop = async (): Promise<void> => {
    await Promise.all(servers.map((s) => stopProcess(s)))
    if (scope) await Effect.runPromise(Scope.close(scope, Exit.void))
    await pool?.end().catch(() => {})
    await dropRun(env, dbName, prefix)
  }

  try {
    const clusterKey = Trust.newPrivateKey()
    const serverEnv = {
      DATABASE_URL: dbUrl,
      REDIS_URL: env.redisUrl,
      PICUS_REDIS_PREFIX: prefix,
      PICUS_TOKENS: token,
      // One cluster key for the run's instances: each checks the sessions of the others.
      PICUS_CLUSTER_KEY: clusterKey,
      ...extraEnv,
    }
    // One first, so it creates and migrates the database alone.
    servers.push(await startServer(`${name}-a`, serverEnv))
    for (let i = 1; i < instances; i++) servers.push(await startServer(`${name}-${i}`, serverEnv))
    pool = new pg.Pool({ connectionString: dbUrl, max: 2 })
    // Dropping the database at teardown ends idle connections: not an error of the run.
    pool.on("error", () => {})
    scope = Effect.runSync(Scope.make())
    const context: Context.Context<Stores | Transport> = await Effect.runPromise(
      Layer.buildWithScope(
        Layer.mergeAll(
          PgStore.layer(dbUrl, { migrate: false, maxPoolSize: 8 }),
          TransportRedis.layerRedis({ url: env.redisUrl, prefix }),
        ),
        scope,
      ),
    )
    const clusterScope = scope
    return {
      token,
      clusterPublicKey: Trust.signingKeyOf(clusterKey)!.publicKey,
      prefix,
      redisUrl: env.redisUrl,
      databaseUrl: dbUrl,
      servers,
      pool,
      // Fleets made here live until the cluster stops.
      run: (effect) =>
        Effect.runPromise(effect.pipe(Scope.provide(clusterScope), Effect.provideContext(context))),
      stop,
    }
  } catch (error) {
    await stop().catch(() => {})
    throw error
  }
}

/** Rejects with `what` after `ms`, so that a stuck phase becomes a failure instead of a hang. */
export const withTimeout = <A>(promise: Promise<A>, ms: number, what: () => string): Promise<A> => {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms / 1000} s: ${what()}`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

export const makeFleet = (cluster: Cluster, peers: number, jobMs: number): Promise<SimulatedFleet> =>
  cluster.run(
    makeSimulatedFleet({
      peers,
      runId: randomBytes(3).toString("hex"),
      token: cluster.token,
      serverIp: "127.0.0.1",
      // No os, and the bench's servers have an empty catalog: no catalog jobs for these peers.
      os: undefined,
      agentVersion: "bench",
      sealed: true,
      jobMs,
      rampMs: 0,
      registerTimeoutMs: 30_000,
      reconnectBaseMs: 1_000,
      reconnectMaxMs: 30_000,
    }),
  )

export const openSessions = async (pool: pg.Pool): Promise<number> => {
  const { rows } = await pool.query<{ n: number }>(
    "select count(*)::int as n from sessions where closed_at is null",
  )
  return rows[0]!.n
}

// ---------------------------------------------------------------------------------------------

export interface StormOptions {
  readonly peers: number
  readonly idleMs: number
  readonly timeoutMs: number
}

export interface StormResult {
  readonly instances: number
  readonly peers: number
  /** From the fleet's start until every peer was accepted once. */
  readonly allAcceptedMs?: number
  /** Open sessions in PostgreSQL once all were accepted (must equal peers). */
  readonly openSessions?: number
  /** Register sent → accepted read, over the peers (the last registration of each). */
  readonly registerP50Ms?: number
  readonly registerP99Ms?: number
  /** Registrations sent again (no answer in time) and rejections during the storm. */
  readonly stormResent?: number
  readonly stormRejected?: number
  /** Mean server cores (all instances summed) during the storm. */
  readonly stormServerCores?: number
  /** Mean busy cores of the whole machine during the storm (the fleet runs in the bench process). */
  readonly stormMachineCores?: number
  /** 1-minute load average when the storm started: a busy machine shows up here. */
  readonly loadAvg1?: number
  readonly idleMs: number
  /** Mean server cores (all instances summed) while the fleet idles, heartbeating. */
  readonly idleServerCores?: number
  readonly heartbeatsPerSecond?: number
  /** Peak of the servers' summed RSS over the storm and the idle window. */
  readonly serverRssPeakBytes?: number
  /** Sessions expired, rejected or registered again during the idle window: 0 when healthy. */
  readonly idleExpired?: number
  readonly idleRejected?: number
  readonly idleReregistered?: number
  readonly error?: string
}

const delta = (after: Counters, before: Counters, key: keyof Counters): number => after[key] - before[key]

/** One storm on a fresh cluster of `instances` servers; a failure or a timeout is a result too. */
export const runStorm = async (
  env: BenchEnv,
  instances: number,
  options: StormOptions,
): Promise<StormResult> => {
  const label = `[storm · ${instances} instance(s) · ${options.peers} peers]`
  const base = { instances, peers: options.peers, idleMs: options.idleMs }
  let cluster: Cluster | undefined
  let fleet: SimulatedFleet | undefined
  const partial: { -readonly [K in keyof StormResult]?: StormResult[K] } = {}
  try {
    cluster = await startCluster(env, `storm${instances}`, instances)
    const pids = cluster.servers.map((s) => s.pid!)
    const { pool } = cluster
    const work = async (): Promise<StormResult> => {
      partial.loadAvg1 = loadavg()[0] ?? 0
      const stormCpu = startProcessSampler(pids)
      const machine = startMachineSampler()
      fleet = await makeFleet(cluster!, options.peers, 0)
      const f = fleet
      const refused = Effect.runPromise(f.refused).then((reason) => {
        throw new Error(`a peer was refused: ${reason}`)
      })
      const allAcceptedMs = await Promise.race([Effect.runPromise(f.allAccepted), refused])
      const storm = stormCpu.stop()
      const stormMachineCores = machine.stop().meanCores
      partial.allAcceptedMs = allAcceptedMs
      // Accepted should mean logged (the session row is committed before the acceptance is sent);
      // a few seconds' grace all the same, then a mismatch is reported after the idle window.
      let open = await openSessions(pool)
      for (let i = 0; i < 50 && open !== options.peers; i++) {
        await sleep(100)
        open = await openSessions(pool)
      }
      partial.openSessions = open
      const atStorm = f.report()

      console.log(
        `${label} all accepted in ${(allAcceptedMs / 1000).toFixed(2)} s, register p50 ` +
          `${atStorm.registerLatency.p50Ms} ms p99 ${atStorm.registerLatency.p99Ms} ms; idling ${options.idleMs / 1000} s`,
      )
      const before = { ...f.counters }
      const idleCpu = startProcessSampler(pids)
      const idleStart = wallNow()
      await sleep(options.idleMs)
      const idle: CpuSummary = idleCpu.stop()
      const idleWallMs = wallNow() - idleStart
      const after = { ...f.counters }
      const stillOpen = await openSessions(pool)
      const registrationsSent = delta(after, before, "registrationsSent")
      const result: StormResult = {
        ...base,
        allAcceptedMs,
        openSessions: open,
        registerP50Ms: atStorm.registerLatency.p50Ms ?? Number.NaN,
        registerP99Ms: atStorm.registerLatency.p99Ms ?? Number.NaN,
        stormResent: atStorm.counters.registrationsResent,
        stormRejected: atStorm.counters.rejected,
        stormServerCores: storm.meanCores,
        stormMachineCores,
        loadAvg1: partial.loadAvg1,
        idleServerCores: idle.meanCores,
        heartbeatsPerSecond: (delta(after, before, "heartbeatsSent") * 1000) / idleWallMs,
        serverRssPeakBytes: Math.max(storm.maxRssBytes, idle.maxRssBytes),
        idleExpired: delta(after, before, "sessionsExpired"),
        idleRejected: delta(after, before, "rejected"),
        idleReregistered: registrationsSent,
      }
      if (open !== options.peers || stillOpen !== options.peers) {
        const error = `${open} open sessions once all ${options.peers} were accepted, ${stillOpen} after the idle window`
        return { ...result, error }
      }
      return result
    }
    return await withTimeout(
      work(),
      options.timeoutMs,
      () => `${fleet?.report().acceptedPeers ?? 0}/${options.peers} peers accepted`,
    )
  } catch (error) {
    // What the fleet saw so far, to tell a slow server from a lost answer.
    const seen = fleet?.report()
    return {
      ...base,
      ...partial,
      ...(seen === undefined
        ? {}
        : {
            registerP50Ms: seen.registerLatency.p50Ms ?? Number.NaN,
            registerP99Ms: seen.registerLatency.p99Ms ?? Number.NaN,
            stormResent: seen.counters.registrationsResent,
            stormRejected: seen.counters.rejected,
          }),
      error: error instanceof Error ? error.message : String(error),
    }
  } finally {
    // After a timeout `work` may still be running; stopping the fleet and servers ends it.
    if (fleet) await Effect.runPromise(fleet.stop("peer_shutdown", 5_000)).catch(() => {})
    await cluster?.stop().catch((e: unknown) => console.log(`${label} teardown failed: ${String(e)}`))
    await sleep(500)
  }
}
