import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Trust } from "@picus/core"
import { deleteAclUsersWithPrefix, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { createPool, type DatabasePool, sql } from "slonik"
import { detectOs } from "../../packages/peer/src/osInfo.ts"
import { freshDatabase } from "../../packages/server/test/support/database.ts"
import { writeCatalog } from "../support/env.ts"
import { type PrivatePostgres, startPrivatePostgres } from "../support/postgres.ts"
import { eventually, killAll, type Running, sleep, startNode } from "../support/processes.ts"
import { type PrivateRedis, startPrivateRedis } from "../support/redis.ts"

/**
 * Fault scenarios with real processes (servers and peers started with node, real shell jobs),
 * each ending with a ledger check of what PostgreSQL recorded. `pnpm chaos` runs them at full
 * scale and prints a table; the test suite runs them small.
 */

export interface Scale {
  readonly peers: number
  readonly jobsPerPeer: number
}

export interface Ledger {
  readonly scenario: string
  /** Every ticket created, including those of sessions opened again after the fault. */
  readonly tickets: number
  readonly byState: Readonly<Record<string, number>>
  /**
   * Tickets not in a terminal state once everything has stopped, but for `waiting`: must be 0.
   */
  readonly lost: number
  /**
   * Tickets still queued (never sent) at the end that a login after the run went quiet planned
   * (a peer that logged in again late, or while the servers stopped): kept for its next login.
   */
  readonly waiting: number
  /** Result rows beyond one per ticket: must be 0. */
  readonly duplicated: number
  /** Sessions still open once everything has stopped: must be 0. */
  readonly openSessions: number
  /** From the fault (or its end) to the system working again; what "working" means is per scenario. */
  readonly recoveryMs: number
  /** How the sessions ended, by logout reason. */
  readonly logouts: Readonly<Record<string, number>>
}

const here = detectOs()
const serverScript = "packages/server/src/main.ts"
const peerScript = "packages/peer/src/main.ts"

interface Run {
  readonly pool: DatabasePool
  readonly servers: Array<Running>
  readonly peers: Map<string, Running>
  readonly startServer: (id: string) => Promise<Running>
  readonly startPeer: (id: string) => Promise<Running>
  readonly redis?: PrivateRedis
  readonly postgres?: PrivatePostgres
}

const count = async (pool: DatabasePool, text: "results" | "openTickets" | "terminal") => {
  const query =
    text === "results"
      ? sql.unsafe`select count(*)::int as n from job_results`
      : text === "openTickets"
        ? sql.unsafe`select count(*)::int as n from tickets where state in ('queued', 'delivered')`
        : sql.unsafe`select count(*)::int as n from tickets where state not in ('queued', 'delivered')`
  return ((await pool.one(query)) as { n: number }).n
}

const ticketIds = async (pool: DatabasePool) =>
  new Set(
    ((await pool.any(sql.unsafe`select ticket from tickets`)) as ReadonlyArray<{ ticket: string }>).map(
      (t) => t.ticket,
    ),
  )

/** Peers whose open session `serverId` holds now (it logged them in, or took them over). */
const heldBy = async (pool: DatabasePool, serverId: string) =>
  (
    (await pool.any(
      sql.unsafe`select peer_id from sessions where closed_at is null and owner_id = ${serverId}`,
    )) as ReadonlyArray<{ peer_id: string }>
  ).map((r) => r.peer_id)

/** Waits for the next result committed after now; returns how long that took. */
const untilNextResult = async (pool: DatabasePool, since: number) => {
  const before = await count(pool, "results").catch(() => 0)
  await eventually(
    "a result after the fault",
    async () => ((await count(pool, "results")) > before ? true : undefined),
    60_000,
  )
  return Date.now() - since
}

/**
 * Waits until `to` holds an open session of every one of `victims` (the same session taken over,
 * or a new one after they registered again); returns the time since `since`.
 */
const untilPeersMoved = async (run: Run, victims: ReadonlyArray<string>, to: string, since: number) => {
  await eventually(
    `${victims.length} peers back on ${to}`,
    async () => {
      const on = new Set(await heldBy(run.pool, to))
      return victims.every((p) => on.has(p)) ? true : undefined
    },
    60_000,
  )
  return Date.now() - since
}

/** Redis killed, away for 3 s, started again; recovery is until the next result is committed. */
const restartRedis = async (run: Run) => {
  await run.redis!.stop()
  await sleep(3_000)
  await run.redis!.start()
  return untilNextResult(run.pool, Date.now())
}

/** Signals server-1; recovery is until server-2 holds a session of each of its peers. */
const signalFirstServer = async (run: Run, signal: NodeJS.Signals) => {
  const victims = await heldBy(run.pool, "server-1")
  run.servers[0]!.signalGroup(signal)
  return untilPeersMoved(run, victims, "server-2", Date.now())
}

interface ScenarioSpec {
  readonly servers: number
  readonly privateRedis?: { readonly persistent: boolean }
  readonly privatePostgres?: boolean
  /**
   * The fault is a server's, and its sessions are taken over: no new login, so no new plan, and
   * every ticket is one of the first plan. (Through a Redis or PostgreSQL outage sessions survive
   * too, but on a loaded machine a few peers may time out and log in again.)
   */
  readonly keepsSessions: boolean
  /** Injects the fault once the run is under way; returns the recovery time. */
  readonly fault: (run: Run) => Promise<number>
}

export const scenarios: Record<string, ScenarioSpec> = {
  "kill -9 one of two servers": {
    servers: 2,
    keepsSessions: true,
    fault: (run) => signalFirstServer(run, "SIGKILL"),
  },
  "Redis restarted, AOF on": {
    servers: 1,
    keepsSessions: false,
    privateRedis: { persistent: true },
    fault: (run) => restartRedis(run),
  },
  "Redis restarted, no persistence": {
    servers: 1,
    keepsSessions: false,
    privateRedis: { persistent: false },
    fault: (run) => restartRedis(run),
  },
  "PostgreSQL away for 10 s": {
    servers: 1,
    keepsSessions: false,
    privatePostgres: true,
    fault: async (run) => {
      run.postgres!.stop()
      await sleep(10_000)
      run.postgres!.start()
      return untilNextResult(run.pool, Date.now())
    },
  },
  "kill -9 a peer mid-job, start it again": {
    servers: 1,
    keepsSessions: false,
    fault: async (run) => {
      const [id, victim] = [...run.peers.entries()][0]!
      victim.signalGroup("SIGKILL")
      await sleep(1_000)
      const since = Date.now()
      const again = await run.startPeer(id)
      await again.waitForLine(/registered as/, 60_000)
      return Date.now() - since
    },
  },
  "SIGSTOP a server past its lease, then SIGCONT": {
    servers: 2,
    keepsSessions: true,
    fault: async (run) => {
      const recovery = await signalFirstServer(run, "SIGSTOP")
      run.servers[0]!.signalGroup("SIGCONT")
      return recovery
    },
  },
  "Ctrl+C on one of two servers": {
    servers: 2,
    keepsSessions: false,
    fault: (run) => signalFirstServer(run, "SIGINT"),
  },
}

/** Runs one scenario from a fresh database and key prefix, and returns its ledger. */
export const runScenario = async (name: string, scale: Scale): Promise<Ledger> => {
  const spec = scenarios[name]
  if (!spec) throw new Error(`no scenario "${name}"`)
  const redis = spec.privateRedis ? await startPrivateRedis(spec.privateRedis) : undefined
  const postgres = spec.privatePostgres ? await startPrivatePostgres() : undefined
  const db = postgres ? undefined : await freshDatabase()
  const databaseUrl = postgres?.url ?? db!.url
  const pool = await createPool(databaseUrl, { maxPoolSize: 2 })
  pool.on("error", () => {})
  const dir = mkdtempSync(join(tmpdir(), "picus-chaos-"))
  const catalog = writeCatalog(
    dir,
    Array.from({ length: scale.jobsPerPeer }, (_, i) => ({
      id: `job-${i}`,
      name: `Job ${i}`,
      os: here.os,
      distro: here.distro,
      command: `sleep 0.0$((RANDOM % 5)); echo ${i}`,
      timeout_ms: 10_000,
    })),
  )
  const clusterKey = Trust.newPrivateKey()
  const env: Record<string, string> = {
    DATABASE_URL: databaseUrl,
    REDIS_URL: redis?.url ?? testRedisUrl(),
    PICUS_REDIS_PREFIX: testKeyPrefix(),
    PICUS_TOKENS: "chaos-token",
    // The servers' shared key, and its public half for the peers to pin.
    PICUS_CLUSTER_KEY: clusterKey,
    PICUS_CLUSTER_PUBLIC_KEY: Trust.signingKeyOf(clusterKey)!.publicKey,
    PICUS_CATALOG: catalog,
    PICUS_HEARTBEAT_MS: "500",
    PICUS_GRACE_MS: "3000",
    PICUS_LEASE_MS: "2000",
    PICUS_DRAIN_MS: "2000",
  }
  const servers: Array<Running> = []
  const peers = new Map<string, Running>()
  const run: Run = {
    pool,
    servers,
    peers,
    ...(redis ? { redis } : {}),
    ...(postgres ? { postgres } : {}),
    startServer: async (id) => {
      const server = startNode(id, serverScript, [], { ...env, PICUS_SERVER_ID: id })
      await server.waitForLine(/serving/, 60_000)
      servers.push(server)
      return server
    },
    startPeer: async (id) => {
      const peer = startNode(id, peerScript, ["--peer-id", id, "--state-dir", join(dir, id)], {
        ...env,
        PICUS_TOKEN: "chaos-token",
        PICUS_CONCURRENCY: "2",
      })
      peers.set(id, peer)
      return peer
    },
  }
  try {
    await run.startServer("server-1")
    const ids = Array.from({ length: scale.peers }, (_, i) => `peer-${i + 1}`)
    await Promise.all(ids.map((id) => run.startPeer(id).then((p) => p.waitForLine(/registered as/, 60_000))))
    for (let i = 2; i <= spec.servers; i++) await run.startServer(`server-${i}`)
    // Under way: about a third of the first plan done.
    const planned = scale.peers * scale.jobsPerPeer
    await eventually(
      "a third of the work",
      async () => ((await count(pool, "terminal")) >= planned / 3 ? true : undefined),
      120_000,
    )
    const recoveryMs = await spec.fault(run)
    await eventually(
      "every open ticket answered",
      async () => ((await count(pool, "openTickets")) === 0 ? true : undefined),
      180_000,
    )
    // Quiet: no ticket open and none planned for a second (a peer whose session the fault ended
    // may log in again a little later, and its login plans the catalog again).
    const quiet = await eventually(
      "the run quiet for a second",
      async () => {
        const before = await ticketIds(pool)
        await sleep(1_000)
        const after = await ticketIds(pool)
        const open = await count(pool, "openTickets")
        return open === 0 && after.size === before.size ? after : undefined
      },
      60_000,
    )
    // Stop everything as an operator would: servers first (Ctrl+C), then the peers.
    for (const server of servers) if (server.child.exitCode === null) server.signalGroup("SIGINT")
    await Promise.all(servers.map((s) => s.exited))
    for (const peer of peers.values()) peer.signalGroup("SIGINT")
    await Promise.all([...peers.values()].map((p) => p.exited))

    const waiting = (
      (await pool.any(sql.unsafe`select ticket from tickets where state = 'queued'`)) as ReadonlyArray<{
        ticket: string
      }>
    ).filter((t) => !quiet.has(t.ticket)).length
    const states = (await pool.any(
      sql.unsafe`select state, count(*)::int as n from tickets group by state`,
    )) as ReadonlyArray<{ state: string; n: number }>
    const byState = Object.fromEntries(states.map((s) => [s.state, s.n]))
    const results = (await pool.one(
      sql.unsafe`select count(*)::int as n, count(distinct ticket)::int as d from job_results`,
    )) as { n: number; d: number }
    const open = (await pool.one(
      sql.unsafe`select count(*)::int as n from peer_sessions where logout_at is null`,
    )) as { n: number }
    const logouts = (await pool.any(
      sql.unsafe`select coalesce(logout_reason, 'open') as reason, count(*)::int as n from peer_sessions group by 1`,
    )) as ReadonlyArray<{ reason: string; n: number }>
    return {
      logouts: Object.fromEntries(logouts.map((l) => [l.reason, l.n])),
      scenario: name,
      tickets: states.reduce((sum, s) => sum + s.n, 0),
      byState,
      lost: (byState.queued ?? 0) + (byState.delivered ?? 0) - waiting,
      waiting,
      duplicated: results.n - results.d,
      openSessions: open.n,
      recoveryMs,
    }
  } finally {
    await killAll()
    await pool.end()
    await db?.drop().catch(() => {})
    // A killed server leaves its sessions' Redis users behind on the shared Redis.
    if (!redis) await deleteAclUsersWithPrefix(testRedisUrl(), env.PICUS_REDIS_PREFIX!).catch(() => {})
    await redis?.stop()
    try {
      postgres?.stop()
    } catch {
      // Already stopped.
    }
  }
}

/** The ledger as one row of the printed table. */
export const formatLedgers = (ledgers: ReadonlyArray<Ledger>): string => {
  const rows = ledgers.map((l) => [
    l.scenario,
    String(l.tickets),
    String(l.byState.succeeded ?? 0),
    String(
      (l.byState.cancelled ?? 0) +
        (l.byState.timed_out ?? 0) +
        (l.byState.failed ?? 0) +
        (l.byState.undeliverable ?? 0),
    ),
    String(l.lost),
    String(l.waiting),
    String(l.duplicated),
    String(l.openSessions),
    `${(l.recoveryMs / 1000).toFixed(1)} s`,
  ])
  const head = [
    "scenario",
    "tickets",
    "succeeded",
    "ended otherwise",
    "lost",
    "waiting",
    "duplicated",
    "open sessions",
    "recovery",
  ]
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i]!)).join("  ")
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}
