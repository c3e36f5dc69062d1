import { randomBytes } from "node:crypto"
import { Transport } from "@picus/core"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { makeSimulatedFleet, type SimulatedFleet } from "loadgen"
import { submitJobs } from "server"
import { sleep, wallNow } from "../clock.ts"
import { startProcessSampler } from "../procstat.ts"
import { type Cluster, startCluster, withTimeout } from "../storm.ts"
import type { BenchEnv } from "../system.ts"
import { generate, KINDS, type Kind, oversized, VALID_KINDS, type World } from "./hostile.ts"

/**
 * A flood of hostile uplink entries against one real server process while a few good peers work:
 * what the flood costs (rate, memory, rows, keys) and whether the good peers' work came through
 * untouched (every ticket ended once, with the good peer's own answer).
 */

export interface FuzzOptions {
  readonly messages: number
  readonly seed: number
  readonly goodPeers: number
  /** The flood waits while the uplink holds more entries than this (so Redis memory stays bounded). */
  readonly maxBacklog: number
  /** A good ticket is submitted this often while the flood lasts. */
  readonly ticketEveryMs: number
  /** How long the server may take to drain the uplink after the last entry was sent. */
  readonly drainTimeoutMs: number
  /** Only these kinds (all when undefined); for finding which kind costs the server most. */
  readonly only?: ReadonlySet<Kind>
  readonly log?: (line: string) => void
}

export const defaultOptions: FuzzOptions = {
  messages: 1_000_000,
  seed: 1,
  goodPeers: 4,
  maxBacklog: 20_000,
  ticketEveryMs: 20,
  drainTimeoutMs: 120_000,
}

export const TABLES = ["registration_log", "tickets", "job_results", "peers", "sessions"] as const

export interface Ledger {
  readonly tickets: number
  readonly states: Readonly<Record<string, number>>
  /** Tickets not in a terminal state when the run ended. */
  readonly open: ReadonlyArray<string>
  /** Tickets whose result row is missing, or is not the good peer's own answer. */
  readonly wrongResult: ReadonlyArray<string>
  /** The ticket submitted after the flood: it must succeed too. */
  readonly afterFlood: string | undefined
  readonly afterFloodState: string | undefined
  /** Submission to recorded result of the good tickets, from PostgreSQL's clock. */
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number }
}

export interface FuzzReport {
  readonly messages: number
  readonly seed: number
  readonly byKind: Readonly<Record<string, number>>
  /** Entries of the kinds that may be accepted (registrations with the good token). */
  readonly validSent: number
  readonly sendMs: number
  readonly drainMs: number
  readonly sentPerSecond: number
  readonly handledPerSecond: number
  readonly serverPeakRssBytes: number
  readonly serverRssBeforeBytes: number
  readonly rowsAdded: Readonly<Record<string, number>>
  readonly keysAdded: Readonly<Record<string, number>>
  readonly deadLetters: number
  readonly goodTickets: number
  readonly submitFailures: number
  readonly ledger: Ledger
  readonly serverAlive: boolean
  readonly serverExit?: string
  readonly serverLogTail: string
  /** Why the run failed; empty when it passed. */
  readonly failures: ReadonlyArray<string>
}

const TERMINAL = new Set(["succeeded", "failed", "timed_out", "undeliverable", "cancelled"])

const countRows = async (cluster: Cluster): Promise<Record<string, number>> => {
  const { rows } = await cluster.pool.query<Record<string, number>>(
    `select ${TABLES.map((t) => `(select count(*)::int from ${t}) as ${t}`).join(", ")}`,
  )
  return { ...rows[0]! }
}

/** Keys under the prefix by shape: a peer's id is replaced by `*`. */
const countKeys = async (redis: Redis, prefix: string): Promise<Record<string, number>> => {
  const shapes: Record<string, number> = {}
  let cursor = "0"
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000)
    for (const key of keys) {
      const shape = key.slice(prefix.length + 1).replace(/^(peer|server):[^:]*:/, "$1:*:")
      shapes[shape] = (shapes[shape] ?? 0) + 1
    }
    cursor = next
  } while (cursor !== "0")
  return shapes
}

const diff = (after: Record<string, number>, before: Record<string, number>): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const key of new Set([...Object.keys(after), ...Object.keys(before)])) {
    const d = (after[key] ?? 0) - (before[key] ?? 0)
    if (d !== 0) out[key] = d
  }
  return out
}

/** Uplink entries not yet acknowledged (the server deletes what it acknowledges) and pending ones. */
const uplinkBacklog = async (redis: Redis, uplink: string): Promise<{ length: number; pending: number }> => {
  const length = await redis.xlen(uplink)
  const groups = (await redis.xinfo("GROUPS", uplink).catch(() => [])) as Array<Array<string | number>>
  let pending = 0
  for (const group of groups) {
    const i = group.indexOf("pending")
    if (i >= 0) pending += Number(group[i + 1])
  }
  return { length, pending }
}

export const runFuzz = async (env: BenchEnv, options: FuzzOptions): Promise<FuzzReport> => {
  const log = options.log ?? (() => {})
  const failures: string[] = []
  const cluster = await startCluster(env, "fuzz", 1)
  const server = cluster.servers[0]!
  let serverLog = ""
  const keepLog = (chunk: Buffer) => {
    serverLog = (serverLog + chunk.toString()).slice(-20_000)
  }
  server.stdout?.on("data", keepLog)
  server.stderr?.on("data", keepLog)
  const serverAlive = () => server.exitCode === null && server.signalCode === null
  const redis = new Redis(cluster.redisUrl, { maxRetriesPerRequest: 3 })
  const uplink = `${cluster.prefix}:uplink`
  let fleet: SimulatedFleet | undefined

  const sessions = new Map<string, string>()
  const sent: string[] = []
  const registers: string[] = []
  const tickets: Array<{ ticket: string; peerId: string }> = []
  const world: World = { token: cluster.token, peerIds: [], sessions, sent, registers, tickets }

  /** Every uplink send of the good peers passes here: their sessions and messages, for forgeries. */
  const record = (payloads: ReadonlyArray<string>) => {
    for (const payload of payloads) {
      const m = JSON.parse(payload) as { msg: string; peer_id: string; token: string }
      if (m.msg === "register") {
        registers.push(payload)
        continue
      }
      if (m.msg !== "logout") sessions.set(m.peer_id, m.token)
      sent.push(payload)
      if (sent.length > 4_000) sent.splice(0, 2_000)
    }
  }

  try {
    fleet = await cluster.run(
      Effect.gen(function* () {
        const transport = yield* Transport
        const recording = {
          ...transport,
          sendUplinkBatch: (payloads: ReadonlyArray<string>) =>
            Effect.suspend(() => {
              record(payloads)
              return transport.sendUplinkBatch(payloads)
            }),
        }
        return yield* makeSimulatedFleet({
          peers: options.goodPeers,
          runId: randomBytes(3).toString("hex"),
          token: cluster.token,
          serverIp: "127.0.0.1",
          os: undefined,
          agentVersion: "fuzz-good",
          jobMs: 0,
          rampMs: 0,
          registerTimeoutMs: 10_000,
          reconnectBaseMs: 500,
          reconnectMaxMs: 5_000,
        }).pipe(Effect.provideService(Transport, recording))
      }),
    )
    const good = fleet
    ;(world.peerIds as string[]).push(...good.peerIds)
    await withTimeout(Effect.runPromise(good.allAccepted), 30_000, () => "the good peers were not accepted")

    const submit = async (peerId: string): Promise<string | undefined> => {
      const submission = await cluster.run(
        submitJobs({
          peerId,
          submittedBy: "fuzz",
          jobs: [{ name: "fuzz-good", command: "echo hi", timeoutMs: 30_000 }],
        }),
      )
      for (const t of submission.tickets) tickets.push({ ticket: t.ticket, peerId })
      return submission.tickets[0]?.ticket
    }
    // A few tickets first, so the forgeries have real ones to aim at.
    for (const peerId of good.peerIds) await submit(peerId)

    const rowsBefore = await countRows(cluster)
    const keysBefore = await countKeys(redis, cluster.prefix)
    const rssBefore = startProcessSampler(server.pid!).stop().maxRssBytes
    const sampler = startProcessSampler(server.pid!, 100)

    let flooding = true
    let submitFailures = 0
    const submitter = (async () => {
      let i = 0
      while (flooding) {
        await submit(good.peerIds[i++ % good.peerIds.length]!).catch(() => {
          submitFailures++
        })
        await sleep(options.ticketEveryMs)
      }
    })()

    const byKind: Record<string, number> = Object.fromEntries(KINDS.map((k) => [k, 0]))
    const oversizedCount = Math.max(3, Math.round(options.messages / 200_000))
    const oversizedEvery = Math.max(1, Math.floor(options.messages / oversizedCount))
    const batchSize = 500
    const startedAt = wallNow()
    let total = 0
    let batchNo = 0
    let lastProgress = startedAt
    while (total < options.messages && serverAlive()) {
      const n = Math.min(batchSize, options.messages - total)
      const batch = generate(world, n, options.seed * 1_000_003 + batchNo++, total, options.only)
      const pipeline = redis.pipeline()
      for (const [i, entry] of batch.entries()) {
        const serial = total + i
        const big = serial % oversizedEvery === oversizedEvery - 1 && (options.only?.has("oversized") ?? true)
        const h = big ? oversized(world, serial) : entry
        byKind[h.kind] = (byKind[h.kind] ?? 0) + 1
        pipeline.xadd(uplink, "*", "m", h.payload)
      }
      await pipeline.exec()
      total += n
      // Bounded backlog: the flood goes as fast as the server drains it, not as fast as Redis takes it.
      while (serverAlive() && (await redis.xlen(uplink)) > options.maxBacklog) await sleep(5)
      if (wallNow() - lastProgress > 5_000) {
        lastProgress = wallNow()
        const rate = (total * 1000) / (lastProgress - startedAt)
        log(
          `  ${total} sent, ${Math.round(rate)}/s, server RSS ${mib(startProcessSampler(server.pid!).stop().maxRssBytes)}`,
        )
      }
    }
    const sentAt = wallNow()

    // Drained when nothing is left on the uplink, read or unread.
    const drainDeadline = sentAt + options.drainTimeoutMs
    let drained = false
    while (serverAlive() && wallNow() < drainDeadline) {
      const backlog = await uplinkBacklog(redis, uplink)
      if (backlog.length === 0 && backlog.pending === 0) {
        drained = true
        break
      }
      await sleep(10)
    }
    const drainedAt = wallNow()
    if (!drained && serverAlive())
      failures.push(`the uplink was not drained ${options.drainTimeoutMs / 1000} s after the flood`)
    flooding = false
    await submitter

    // The server still serves: a ticket submitted now completes.
    let afterFlood: string | undefined
    if (serverAlive()) afterFlood = await submit(good.peerIds[0]!).catch(() => undefined)
    const ours = tickets.map((t) => t.ticket)
    const settleDeadline = wallNow() + 60_000
    let states: Map<string, string> = new Map()
    for (;;) {
      const { rows } = await cluster.pool.query<{ ticket: string; state: string }>(
        "select ticket, state from tickets where ticket = any($1::text[])",
        [ours],
      )
      states = new Map(rows.map((r) => [r.ticket, r.state]))
      const open = ours.filter((t) => !TERMINAL.has(states.get(t) ?? ""))
      if (open.length === 0 || !serverAlive() || wallNow() > settleDeadline) break
      await sleep(50)
    }
    const serverPeak = sampler.stop().maxRssBytes

    const { rows: results } = await cluster.pool.query<{ ticket: string; peer_id: string; output: string }>(
      "select ticket, peer_id, output from job_results where ticket = any($1::text[])",
      [ours],
    )
    const { rows: latency } = await cluster.pool.query<{
      p50: number | null
      p99: number | null
      max: number | null
    }>(
      `select percentile_cont(0.5) within group (order by ms) as p50, percentile_cont(0.99) within group (order by ms) as p99,
         max(ms) as max
       from (select extract(epoch from r.received_at - t.created_at) * 1000 as ms
             from job_results r join tickets t using (ticket) where t.ticket = any($1::text[])) as l`,
      [ours],
    )
    const resultOf = new Map(results.map((r) => [r.ticket, r]))
    const peerOf = new Map(tickets.map((t) => [t.ticket, t.peerId]))
    const wrongResult = ours.filter((t) => {
      const r = resultOf.get(t)
      if (states.get(t) !== "succeeded") return false
      return r === undefined || r.peer_id !== peerOf.get(t) || !r.output.startsWith("simulated:")
    })
    const stateCounts: Record<string, number> = {}
    for (const t of ours) {
      const s = states.get(t) ?? "missing"
      stateCounts[s] = (stateCounts[s] ?? 0) + 1
    }
    const ledger: Ledger = {
      tickets: ours.length,
      states: stateCounts,
      open: ours.filter((t) => !TERMINAL.has(states.get(t) ?? "")),
      wrongResult,
      afterFlood,
      afterFloodState: afterFlood === undefined ? undefined : states.get(afterFlood),
      latencyMs: {
        p50: Number(latency[0]?.p50 ?? Number.NaN),
        p99: Number(latency[0]?.p99 ?? Number.NaN),
        max: Number(latency[0]?.max ?? Number.NaN),
      },
    }

    const rowsAdded = diff(await countRows(cluster), rowsBefore)
    const keysAdded = diff(await countKeys(redis, cluster.prefix), keysBefore)
    const deadLetters = await redis.xlen(`${cluster.prefix}:deadletters`)
    // Every result row is a good peer's: no forgery was recorded.
    const { rows: strangers } = await cluster.pool.query<{ n: number }>(
      "select count(*)::int as n from job_results where not (ticket = any($1::text[]))",
      [ours],
    )

    const alive = serverAlive()
    if (!alive) failures.push(`the server process died (${server.exitCode ?? server.signalCode})`)
    if (ledger.open.length > 0) failures.push(`${ledger.open.length} good ticket(s) never ended`)
    if (ledger.wrongResult.length > 0)
      failures.push(`${ledger.wrongResult.length} good ticket(s) without their own single result`)
    const lost = ours.length - (stateCounts.succeeded ?? 0) - ledger.open.length
    if (lost > 0) failures.push(`${lost} good ticket(s) ended without success`)
    if (ledger.afterFloodState !== "succeeded")
      failures.push(`the ticket submitted after the flood ended ${ledger.afterFloodState ?? "unsubmitted"}`)
    if ((strangers[0]?.n ?? 0) > 0)
      failures.push(`${strangers[0]!.n} result row(s) for tickets not submitted`)
    if (total < options.messages) failures.push(`only ${total} of ${options.messages} entries were sent`)

    const sendMs = sentAt - startedAt
    const drainMs = drainedAt - startedAt
    const validSent = KINDS.filter((k) => VALID_KINDS.has(k as Kind)).reduce(
      (a, k) => a + (byKind[k] ?? 0),
      0,
    )
    return {
      messages: total,
      seed: options.seed,
      byKind,
      validSent,
      sendMs,
      drainMs,
      sentPerSecond: (total * 1000) / sendMs,
      handledPerSecond: (total * 1000) / drainMs,
      serverPeakRssBytes: Math.max(serverPeak, rssBefore),
      serverRssBeforeBytes: rssBefore,
      rowsAdded,
      keysAdded,
      deadLetters,
      goodTickets: ours.length,
      submitFailures,
      ledger,
      serverAlive: alive,
      ...(alive ? {} : { serverExit: String(server.exitCode ?? server.signalCode) }),
      serverLogTail: serverLog.slice(-4_000),
      failures,
    }
  } finally {
    if (fleet) await Effect.runPromise(fleet.stop("peer_shutdown", 2_000)).catch(() => {})
    redis.disconnect()
    await cluster.stop()
  }
}

export const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(0)} MiB`

/** The report as a person reads it. */
export const describe = (r: FuzzReport): string => {
  const kinds = Object.entries(r.byKind)
    .filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`)
    .join(", ")
  const entries = (o: Readonly<Record<string, number>>) =>
    Object.entries(o)
      .map(([k, n]) => `${k} ${n > 0 ? "+" : ""}${n}`)
      .join(", ") || "none"
  return [
    `hostile entries: ${r.messages} (${kinds}); ${r.validSent} of them valid registrations`,
    `sent in ${(r.sendMs / 1000).toFixed(1)} s (${Math.round(r.sentPerSecond)}/s); drained after ${(r.drainMs / 1000).toFixed(1)} s: ${Math.round(r.handledPerSecond)} handled/s`,
    `server RSS: ${mib(r.serverRssBeforeBytes)} before, peak ${mib(r.serverPeakRssBytes)}`,
    `PostgreSQL rows added: ${entries(r.rowsAdded)}`,
    `Redis keys added: ${entries(r.keysAdded)}`,
    `dead letters: ${r.deadLetters}`,
    `good tickets: ${r.ledger.tickets} (${entries(r.ledger.states)}); submit failures ${r.submitFailures}; open ${r.ledger.open.length}, wrong or missing result ${r.ledger.wrongResult.length}; after the flood: ${r.ledger.afterFloodState ?? "none"}`,
    `good ticket latency (submitted → result recorded): p50 ${r.ledger.latencyMs.p50.toFixed(0)} ms, p99 ${r.ledger.latencyMs.p99.toFixed(0)} ms, max ${r.ledger.latencyMs.max.toFixed(0)} ms`,
    `server: ${r.serverAlive ? "alive" : `died (${r.serverExit})`}`,
    r.failures.length === 0 ? "PASS" : `FAIL: ${r.failures.join("; ")}`,
  ].join("\n")
}
