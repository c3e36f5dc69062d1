import { randomBytes } from "node:crypto"
import { loadavg } from "node:os"
import { enrollAclRules, makeKeys, Transport } from "@picus/core"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { type Counters, makeSimulatedFleet, type SimulatedFleet } from "loadgen"
import { submitJobs } from "server"
import { sleep, wallNow } from "../clock.ts"
import { startProcessSampler } from "../procstat.ts"
import { type Cluster, startCluster, withTimeout } from "../storm.ts"
import type { BenchEnv } from "../system.ts"
import {
  generate,
  KINDS,
  type Kind,
  leakedKeyRegistration,
  oversized,
  VALID_KINDS,
  type World,
} from "./hostile.ts"
import { loginAs, type SignedCounts, type SignedPeer, startSignedPeer } from "./signed.ts"

/**
 * A flood of hostile entries pushed onto the uplink intake (where anyone with a Redis login of the
 * cluster can write) against one real server process, while good peers work: simulated ones, and
 * peers bound to an identity key in sealed sessions, whom the flood forges for. What the flood costs
 * (rate, memory, rows, keys) and whether the good peers' work came through untouched (every ticket
 * ended once, with its own peer's answer; the signed peers' sessions still open, the same ones).
 */

export interface FuzzOptions {
  readonly messages: number
  readonly seed: number
  readonly goodPeers: number
  /** Peers enrolled with an identity key (sealed sessions), forged for by the signed kinds. */
  readonly signedPeers: number
  /**
   * The flood waits while the intake and the uplink stream (read or not) hold more entries than
   * this, so Redis memory stays bounded.
   */
  readonly maxBacklog: number
  /** A good ticket is submitted this often while the flood lasts. */
  readonly ticketEveryMs: number
  /** How long the server may take to drain the uplink after the last entry was sent. */
  readonly drainTimeoutMs: number
  /**
   * After the drain, the good tickets are waited for while they keep ending (a long flood leaves a
   * queue of them): until none is open, or none ended for this long (default 60 s), or 20 minutes.
   */
  readonly settleMs?: number
  /** Only these kinds (all when undefined); for finding which kind costs the server most. */
  readonly only?: ReadonlySet<Kind>
  /**
   * Waits this long after the drain before counting registration_log (the server writes the
   * refusals it counted every 10 s). Default 11 s.
   */
  readonly logSettleMs?: number
  /**
   * Tests only: after the flood, one registration signed with a signed peer's own key (as if it had
   * leaked), which replaces that peer's session: the ledger must then fail.
   */
  readonly plantLeakedKey?: boolean
  readonly log?: (line: string) => void
}

export const defaultOptions: FuzzOptions = {
  messages: 1_000_000,
  seed: 1,
  goodPeers: 4,
  signedPeers: 2,
  maxBacklog: 20_000,
  ticketEveryMs: 20,
  drainTimeoutMs: 120_000,
}

export const TABLES = ["registration_log", "tickets", "job_results", "peers", "sessions"] as const

export interface Ledger {
  readonly tickets: number
  readonly states: Readonly<Record<string, number>>
  /** The same, for each good peer, with its tickets' latency (p50Ms, maxMs). */
  readonly byPeer: Readonly<Record<string, Readonly<Record<string, number>>>>
  /** Tickets not in a terminal state when the run ended. */
  readonly open: ReadonlyArray<string>
  /** Tickets whose result row is missing, or is not the good peer's own answer. */
  readonly wrongResult: ReadonlyArray<string>
  /** The ticket submitted after the flood: it must succeed too. */
  readonly afterFlood: string | undefined
  readonly afterFloodState: string | undefined
  /** Submission to recorded result of the good tickets, from PostgreSQL's clock. */
  readonly latencyMs: { readonly p50: number; readonly p99: number; readonly max: number }
  /** The signed peers: their session at the start and at the end, and what they saw meanwhile. */
  readonly signed: ReadonlyArray<SignedLedger>
}

export interface SignedLedger {
  readonly peerId: string
  readonly sessionId: string
  /** The session PostgreSQL has open for the peer at the end (must be `sessionId`). */
  readonly openAtEnd: string | undefined
  /** Whether the peer id is still bound to its own identity key. */
  readonly keyKept: boolean
  readonly ownRedisUser: boolean
  readonly counts: SignedCounts
}

/** Redis keys added under the prefix, by shape: how many, and how many of those have no TTL. */
export interface KeyCount {
  readonly added: number
  /** Of those, without an expiry: what stays once the TTLs have run out. */
  readonly stay: number
}

export interface FuzzReport {
  readonly messages: number
  readonly seed: number
  readonly byKind: Readonly<Record<string, number>>
  /** Entries of the kinds that may be accepted (registrations with the good token). */
  readonly validSent: number
  readonly sendMs: number
  readonly drainMs: number
  /** From the drain until the good tickets had all ended (or the wait gave up). */
  readonly settledMs: number
  readonly sentPerSecond: number
  readonly handledPerSecond: number
  readonly serverPeakRssBytes: number
  readonly serverRssBeforeBytes: number
  readonly rowsAdded: Readonly<Record<string, number>>
  /** registration_log: rows added, and the refusals they stand for (the sum of `repeats`). */
  readonly registrationLog: {
    readonly rows: number
    readonly repeats: number
    /** Rows standing for more than one refusal (counted beyond the log's rate). */
    readonly countedRows: number
    readonly rowsPerSecond: number
    /** Of the rows, the refusals' (the rest are logins and logouts), and their rate over the run. */
    readonly rejectedRows: number
    readonly rejectedRowsPerSecond: number
    /** Registrations refused, by reason (counted ones included). */
    readonly refusedByReason: Readonly<Record<string, number>>
  }
  /** By `reply:*`, `peer:*:inbox`, `peer:*:owner`, and every other shape. */
  readonly keysAdded: Readonly<Record<string, KeyCount>>
  /** Intake entries dropped by the intake script for their size (over MAX_MESSAGE_BYTES). */
  readonly intakeDropped: number
  /** The largest backlog (intake + uplink stream) the flood saw. */
  readonly backlogPeak: number
  readonly deadLetters: number
  readonly goodTickets: number
  readonly submitFailures: number
  /** What the simulated peers counted (sessions expired, registrations resent, jobs ignored, ...). */
  readonly fleet: Readonly<Counters>
  readonly ledger: Ledger
  readonly serverAlive: boolean
  readonly serverExit?: string
  readonly serverLogTail: string
  /** The machine's 1-minute load average when the flood started and when the run ended. */
  readonly loadAvg: { readonly start: number; readonly end: number }
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

interface LogCount {
  readonly rows: number
  readonly repeats: number
  readonly counted: number
  readonly rejectedRows: number
  /** Refusals (the sum of `repeats` of `rejected` rows) by reason. */
  readonly reasons: Record<string, number>
}

const countLog = async (cluster: Cluster): Promise<LogCount> => {
  const { rows } = await cluster.pool.query<Omit<LogCount, "reasons">>(
    `select count(*)::int as rows, coalesce(sum(repeats), 0)::int as repeats,
       (count(*) filter (where repeats > 1))::int as counted,
       (count(*) filter (where event = 'rejected'))::int as "rejectedRows"
     from registration_log`,
  )
  const { rows: reasons } = await cluster.pool.query<{ reason: string; n: number }>(
    `select coalesce(reason, '') as reason, sum(repeats)::int as n from registration_log
     where event = 'rejected' group by 1`,
  )
  return { ...rows[0]!, reasons: Object.fromEntries(reasons.map((r) => [r.reason, r.n])) }
}

/** The shape of a key under the prefix: a peer's, server's or reply's name replaced by `*`. */
const shapeOf = (key: string, prefix: string): string =>
  key
    .slice(prefix.length + 1)
    .replace(/^(peer|server):[^:]*:/, "$1:*:")
    .replace(/^reply:.*$/, "reply:*")

/** Keys under the prefix by shape, and of each shape how many have no TTL. */
const countKeys = async (redis: Redis, prefix: string): Promise<Record<string, KeyCount>> => {
  const shapes: Record<string, { added: number; stay: number }> = {}
  let cursor = "0"
  do {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000)
    const pipeline = redis.pipeline()
    for (const key of keys) pipeline.pttl(key)
    const ttls = (await pipeline.exec()) ?? []
    for (const [i, key] of keys.entries()) {
      const ttl = Number(ttls[i]?.[1] ?? -2)
      if (ttl === -2) continue // gone meanwhile
      const shape = shapeOf(key, prefix)
      const count = shapes[shape] ?? { added: 0, stay: 0 }
      shapes[shape] = count
      count.added++
      if (ttl === -1) count.stay++
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

const diffKeys = (
  after: Record<string, KeyCount>,
  before: Record<string, KeyCount>,
): Record<string, KeyCount> => {
  const out: Record<string, KeyCount> = {}
  for (const shape of new Set([...Object.keys(after), ...Object.keys(before)])) {
    const added = (after[shape]?.added ?? 0) - (before[shape]?.added ?? 0)
    const stay = (after[shape]?.stay ?? 0) - (before[shape]?.stay ?? 0)
    if (added !== 0 || stay !== 0) out[shape] = { added, stay }
  }
  return out
}

/**
 * What waits for the server: entries on the intake, entries on the uplink stream (the server deletes
 * what it acknowledges, so read and unread), and of those how many are read and not acknowledged.
 */
const backlogOf = async (
  redis: Redis,
  intake: string,
  uplink: string,
): Promise<{ intake: number; stream: number; pending: number }> => {
  const lengths = (await redis.pipeline().llen(intake).xlen(uplink).exec()) ?? []
  const [intakeLength, streamLength] = lengths.map(([error, n]) => {
    if (error) throw error
    return Number(n)
  })
  const groups = (await redis.xinfo("GROUPS", uplink).catch(() => [])) as Array<Array<string | number>>
  let pending = 0
  for (const group of groups) {
    const i = group.indexOf("pending")
    if (i >= 0) pending += Number(group[i + 1])
  }
  return { intake: intakeLength ?? 0, stream: streamLength ?? 0, pending }
}

/** The flood's own Redis login: what an enrolling peer may do (RPUSH the intake, XREAD reply streams). */
const hostileLogin = async (redis: Redis, cluster: Cluster): Promise<Redis> => {
  // Under the prefix (the run's cleanup deletes it), outside the names the servers manage.
  const user = `${cluster.prefix}:fuzz:hostile`
  const password = randomBytes(24).toString("base64url")
  await redis.call(
    "ACL",
    "SETUSER",
    user,
    "reset",
    "on",
    `>${password}`,
    ...enrollAclRules(makeKeys(cluster.prefix)),
  )
  const client = loginAs(cluster.redisUrl, user, password)
  await client.connect()
  return client
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
  const keys = makeKeys(cluster.prefix)
  let fleet: SimulatedFleet | undefined
  let hostile: Redis | undefined
  const signedPeers: SignedPeer[] = []

  const sessions = new Map<string, string>()
  const sent: string[] = []
  const registers: string[] = []
  const tickets: Array<{ ticket: string; peerId: string }> = []
  const world: World = {
    token: cluster.token,
    peerIds: [],
    sessions,
    sent,
    registers,
    tickets,
    signed: signedPeers,
    now: () => Date.now(),
  }
  const keepSent = (payload: string) => {
    sent.push(payload)
    if (sent.length > 4_000) sent.splice(0, 2_000)
  }

  /** Every uplink send of the good peers passes here: their sessions and messages, for forgeries. */
  const record = (payloads: ReadonlyArray<string>) => {
    for (const payload of payloads) {
      const m = JSON.parse(payload) as { msg: string; peer_id: string; token: string }
      if (m.msg === "register") {
        registers.push(payload)
        continue
      }
      if (m.msg !== "logout") sessions.set(m.peer_id, m.token)
      keepSent(payload)
    }
  }

  try {
    hostile = await hostileLogin(redis, cluster)
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
    // Signed peers enroll over the flood's own login: the one an enrolling peer has.
    const signedRun = randomBytes(3).toString("hex")
    for (let i = 0; i < options.signedPeers; i++) {
      signedPeers.push(
        await startSignedPeer({
          redisUrl: cluster.redisUrl,
          keys,
          enroller: hostile,
          token: cluster.token,
          clusterPublicKey: cluster.clusterPublicKey,
          peerId: `signed-${signedRun}-${i}`,
          onSend: keepSent,
        }),
      )
    }
    const enrolledAt = wallNow()
    log(`  good peers accepted; signed peers enrolled: ${signedPeers.map((p) => p.peerId).join(", ")}`)
    const goodIds = [...good.peerIds, ...signedPeers.map((p) => p.peerId)]
    const signedIds = new Set(signedPeers.map((p) => p.peerId))

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
    // A few tickets first, so the forgeries have real ones to aim at; once they are done, every
    // good peer's inbox exists, and the counts below start from there.
    for (const peerId of goodIds) await submit(peerId)
    const first = tickets.map((t) => t.ticket)
    const firstDone = async () => {
      for (;;) {
        const { rows } = await cluster.pool.query<{ n: number }>(
          "select count(*)::int as n from tickets where ticket = any($1::text[]) and state = 'succeeded'",
          [first],
        )
        if (rows[0]!.n === first.length) return
        await sleep(50)
      }
    }
    await withTimeout(firstDone(), 30_000, () => "the good peers' first tickets did not succeed")

    const rowsBefore = await countRows(cluster)
    const logBefore = await countLog(cluster)
    const keysBefore = await countKeys(redis, cluster.prefix)
    const droppedBefore = Number((await redis.get(keys.intakeDropped)) ?? 0)
    const rssBefore = startProcessSampler(server.pid!).stop().maxRssBytes
    const sampler = startProcessSampler(server.pid!, 100)
    const loadStart = loadavg()[0] ?? 0

    let flooding = true
    let submitFailures = 0
    const submitter = (async () => {
      let i = 0
      while (flooding) {
        await submit(goodIds[i++ % goodIds.length]!).catch(() => {
          submitFailures++
        })
        await sleep(options.ticketEveryMs)
      }
    })()

    const byKind: Record<string, number> = Object.fromEntries(KINDS.map((k) => [k, 0]))
    // Over 1 MiB each, so few: one in 50,000 (at least 3), pushed like the rest, dropped by the intake.
    const oversizedCount = Math.max(3, Math.round(options.messages / 50_000))
    const oversizedEvery = Math.max(1, Math.floor(options.messages / oversizedCount))
    const batchSize = 500
    const startedAt = wallNow()
    let total = 0
    let batchNo = 0
    let lastProgress = startedAt
    let backlogPeak = 0
    const backlogNow = async () => {
      const b = await backlogOf(redis, keys.uplinkIntake, keys.uplink)
      backlogPeak = Math.max(backlogPeak, b.intake + b.stream)
      return b
    }
    while (total < options.messages && serverAlive()) {
      const n = Math.min(batchSize, options.messages - total)
      const batch = generate(world, n, options.seed * 1_000_003 + batchNo++, total, options.only)
      // Where an attacker can write: the intake, one RPUSH an entry, pipelined.
      const pipeline = hostile.pipeline()
      for (const [i, entry] of batch.entries()) {
        const serial = total + i
        const big = serial % oversizedEvery === oversizedEvery - 1 && (options.only?.has("oversized") ?? true)
        const h = big ? oversized(world, serial) : entry
        byKind[h.kind] = (byKind[h.kind] ?? 0) + 1
        pipeline.rpush(keys.uplinkIntake, h.payload)
      }
      const replies = (await pipeline.exec()) ?? []
      const refused = replies.find(([error]) => error !== null)
      if (refused !== undefined) throw new Error(`Redis refused the flood's RPUSH: ${refused[0]?.message}`)
      total += n
      // Bounded backlog: the flood goes as fast as the server drains it, not as fast as Redis takes it.
      for (;;) {
        const b = await backlogNow()
        if (!serverAlive() || b.intake + b.stream <= options.maxBacklog) break
        await sleep(5)
      }
      if (wallNow() - lastProgress > 5_000) {
        lastProgress = wallNow()
        const rate = (total * 1000) / (lastProgress - startedAt)
        log(
          `  ${total} sent, ${Math.round(rate)}/s, server RSS ${mib(startProcessSampler(server.pid!).stop().maxRssBytes)}, load ${(loadavg()[0] ?? 0).toFixed(1)}`,
        )
      }
    }
    if (options.plantLeakedKey === true) {
      // Past the per-id interval since the signed peers registered, so only the key decides.
      await sleep(Math.max(0, enrolledAt + 2_500 - wallNow()))
      await hostile.rpush(keys.uplinkIntake, leakedKeyRegistration(world))
    }
    const sentAt = wallNow()
    log(`  ${total} sent in ${((sentAt - startedAt) / 1000).toFixed(1)} s; draining`)

    // Drained when nothing is left on the intake or the uplink stream, read or unread.
    const drainDeadline = sentAt + options.drainTimeoutMs
    let drained = false
    while (serverAlive() && wallNow() < drainDeadline) {
      const b = await backlogNow()
      if (b.intake === 0 && b.stream === 0 && b.pending === 0) {
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
    log(
      `  drained after ${((drainedAt - startedAt) / 1000).toFixed(1)} s; waiting for the good tickets to end`,
    )

    // The server still serves: a ticket submitted now completes.
    let afterFlood: string | undefined
    if (serverAlive()) afterFlood = await submit(good.peerIds[0]!).catch(() => undefined)
    const ours = tickets.map((t) => t.ticket)
    const settleStart = wallNow()
    let lastEnded = settleStart
    let lastLogged = settleStart
    let openBefore = Number.POSITIVE_INFINITY
    let states: Map<string, string> = new Map()
    for (;;) {
      const { rows } = await cluster.pool.query<{ ticket: string; state: string }>(
        "select ticket, state from tickets where ticket = any($1::text[])",
        [ours],
      )
      states = new Map(rows.map((r) => [r.ticket, r.state]))
      const open = ours.filter((t) => !TERMINAL.has(states.get(t) ?? "")).length
      const now = wallNow()
      if (open < openBefore) lastEnded = now
      if (open > 0 && now - lastLogged > 10_000) {
        lastLogged = now
        log(
          `  ${open} good ticket(s) still open ${((now - settleStart) / 1000).toFixed(0)} s after the drain`,
        )
      }
      openBefore = Math.min(openBefore, open)
      if (open === 0 || !serverAlive()) break
      if (now - lastEnded > (options.settleMs ?? 60_000) || now - settleStart > 20 * 60_000) break
      await sleep(open > 100 ? 1_000 : 50)
    }
    const settledMs = wallNow() - settleStart
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
    const { rows: peerLatency } = await cluster.pool.query<{ peer_id: string; p50: number; max: number }>(
      `select t.peer_id, percentile_cont(0.5) within group (order by ms) as p50, max(ms) as max
       from (select t.peer_id, extract(epoch from r.received_at - t.created_at) * 1000 as ms
             from job_results r join tickets t using (ticket) where t.ticket = any($1::text[])) as t
       group by t.peer_id`,
      [ours],
    )
    const resultOf = new Map(results.map((r) => [r.ticket, r]))
    const peerOf = new Map(tickets.map((t) => [t.ticket, t.peerId]))
    const answerOf = (peerId: string | undefined) =>
      peerId !== undefined && signedIds.has(peerId) ? "signed:" : "simulated:"
    const wrongResult = ours.filter((t) => {
      const r = resultOf.get(t)
      if (states.get(t) !== "succeeded") return false
      return r === undefined || r.peer_id !== peerOf.get(t) || !r.output.startsWith(answerOf(peerOf.get(t)))
    })
    const stateCounts: Record<string, number> = {}
    const byPeer: Record<string, Record<string, number>> = {}
    for (const t of ours) {
      const s = states.get(t) ?? "missing"
      stateCounts[s] = (stateCounts[s] ?? 0) + 1
      const peer: Record<string, number> = byPeer[peerOf.get(t) ?? "?"] ?? {}
      peer[s] = (peer[s] ?? 0) + 1
      byPeer[peerOf.get(t) ?? "?"] = peer
    }

    // The signed peers' sessions: still open, the same ones, still bound to their own keys.
    const { rows: signedRows } = await cluster.pool.query<{
      peer_id: string
      identity_key: string | null
      session_id: string | null
    }>(
      `select p.peer_id, p.identity_key, s.session_id::text as session_id
       from peers p left join sessions s on s.peer_id = p.peer_id and s.closed_at is null
       where p.peer_id = any($1::text[])`,
      [[...signedIds]],
    )
    const signed: SignedLedger[] = signedPeers.map((p) => {
      const row = signedRows.find((r) => r.peer_id === p.peerId)
      return {
        peerId: p.peerId,
        sessionId: p.sessionId,
        openAtEnd: row?.session_id ?? undefined,
        keyKept: row?.identity_key === p.identity.publicKey,
        ownRedisUser: p.ownRedisUser,
        counts: { ...p.counts },
      }
    })

    for (const row of peerLatency) {
      const peer = byPeer[row.peer_id] ?? {}
      peer.p50Ms = Math.round(Number(row.p50))
      peer.maxMs = Math.round(Number(row.max))
      byPeer[row.peer_id] = peer
    }
    const ledger: Ledger = {
      tickets: ours.length,
      states: stateCounts,
      byPeer,
      open: ours.filter((t) => !TERMINAL.has(states.get(t) ?? "")),
      wrongResult,
      afterFlood,
      afterFloodState: afterFlood === undefined ? undefined : states.get(afterFlood),
      latencyMs: {
        p50: Number(latency[0]?.p50 ?? Number.NaN),
        p99: Number(latency[0]?.p99 ?? Number.NaN),
        max: Number(latency[0]?.max ?? Number.NaN),
      },
      signed,
    }

    // The refusals counted beyond the log's rate are written every 10 s.
    await sleep(Math.max(0, drainedAt + (options.logSettleMs ?? 11_000) - wallNow()))
    const rowsAdded = diff(await countRows(cluster), rowsBefore)
    const logAfter = await countLog(cluster)
    const keysAdded = diffKeys(await countKeys(redis, cluster.prefix), keysBefore)
    const intakeDropped = Number((await redis.get(keys.intakeDropped)) ?? 0) - droppedBefore
    const deadLetters = await redis.xlen(keys.deadLetters)
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
    for (const p of signed) {
      const c = p.counts
      if (p.openAtEnd !== p.sessionId)
        failures.push(
          `signed peer ${p.peerId}: its session ${p.sessionId} is not the one open at the end (${p.openAtEnd ?? "none"})`,
        )
      if (!p.keyKept) failures.push(`signed peer ${p.peerId}: no longer bound to its own identity key`)
      const odd = Object.entries({
        "session_expired notices": c.expired,
        shutdowns: c.shutdowns,
        "mis-signed inbox entries": c.misSigned,
        "messages of another session": c.otherSession,
        "failed sends or reads": c.errors,
      }).filter(([, n]) => n > 0)
      if (odd.length > 0)
        failures.push(`signed peer ${p.peerId} saw ${odd.map(([what, n]) => `${n} ${what}`).join(", ")}`)
    }
    if (intakeDropped !== (byKind.oversized ?? 0))
      failures.push(
        `the intake dropped ${intakeDropped} entries for their size, ${byKind.oversized ?? 0} were oversized`,
      )
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
      settledMs,
      sentPerSecond: (total * 1000) / sendMs,
      handledPerSecond: (total * 1000) / drainMs,
      serverPeakRssBytes: Math.max(serverPeak, rssBefore),
      serverRssBeforeBytes: rssBefore,
      rowsAdded,
      registrationLog: {
        rows: logAfter.rows - logBefore.rows,
        repeats: logAfter.repeats - logBefore.repeats,
        countedRows: logAfter.counted - logBefore.counted,
        rowsPerSecond: ((logAfter.rows - logBefore.rows) * 1000) / drainMs,
        rejectedRows: logAfter.rejectedRows - logBefore.rejectedRows,
        rejectedRowsPerSecond: ((logAfter.rejectedRows - logBefore.rejectedRows) * 1000) / drainMs,
        refusedByReason: diff(logAfter.reasons, logBefore.reasons),
      },
      keysAdded,
      intakeDropped,
      backlogPeak,
      deadLetters,
      goodTickets: ours.length,
      submitFailures,
      fleet: { ...good.counters },
      ledger,
      serverAlive: alive,
      ...(alive ? {} : { serverExit: String(server.exitCode ?? server.signalCode) }),
      serverLogTail: serverLog.slice(-4_000),
      loadAvg: { start: loadStart, end: loadavg()[0] ?? 0 },
      failures,
    }
  } finally {
    for (const p of signedPeers) await p.stop().catch(() => {})
    if (fleet) await Effect.runPromise(fleet.stop("peer_shutdown", 2_000)).catch(() => {})
    hostile?.disconnect()
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
  const keys =
    Object.entries(r.keysAdded)
      .map(([k, c]) => `${k} ${c.added > 0 ? "+" : ""}${c.added} (${c.stay} without TTL)`)
      .join(", ") || "none"
  const signed = r.ledger.signed
    .map(
      (p) =>
        `${p.peerId} ${p.openAtEnd === p.sessionId ? "same session open" : `session ${p.openAtEnd ?? "none"} open, was ${p.sessionId}`}` +
        `${p.keyKept ? "" : ", key lost"}, ${p.counts.jobs} jobs, ${p.counts.heartbeats} heartbeats` +
        `${p.ownRedisUser ? " (own Redis user)" : ""}`,
    )
    .join("; ")
  const log = r.registrationLog
  return [
    `hostile entries: ${r.messages} (${kinds}); ${r.validSent} of them valid registrations`,
    `sent in ${(r.sendMs / 1000).toFixed(1)} s (${Math.round(r.sentPerSecond)}/s); drained after ${(r.drainMs / 1000).toFixed(1)} s: ${Math.round(r.handledPerSecond)} handled (refused or taken)/s; backlog peak ${r.backlogPeak}`,
    `machine load (1 min): ${r.loadAvg.start.toFixed(1)} at the start, ${r.loadAvg.end.toFixed(1)} at the end`,
    `server RSS: ${mib(r.serverRssBeforeBytes)} before, peak ${mib(r.serverPeakRssBytes)}`,
    `PostgreSQL rows added: ${entries(r.rowsAdded)}`,
    `registration_log: +${log.rows} rows (${log.rowsPerSecond.toFixed(1)}/s) standing for ${log.repeats} events; refusals ${log.rejectedRows} rows (${log.rejectedRowsPerSecond.toFixed(1)}/s), ${log.countedRows} of them counted rows`,
    `registrations refused: ${entries(log.refusedByReason)}`,
    `Redis keys added: ${keys}`,
    `intake drops (over 1 MiB): ${r.intakeDropped}; dead letters: ${r.deadLetters}`,
    `good tickets: ${r.ledger.tickets} (${entries(r.ledger.states)}); submit failures ${r.submitFailures}; open ${r.ledger.open.length}, wrong or missing result ${r.ledger.wrongResult.length}; after the flood: ${r.ledger.afterFloodState ?? "none"}`,
    `good tickets ended ${(r.settledMs / 1000).toFixed(1)} s after the drain; latency (submitted → result recorded): p50 ${r.ledger.latencyMs.p50.toFixed(0)} ms, p99 ${r.ledger.latencyMs.p99.toFixed(0)} ms, max ${r.ledger.latencyMs.max.toFixed(0)} ms`,
    `per peer: ${Object.entries(r.ledger.byPeer)
      .map(
        ([peer, c]) =>
          `${peer} ${Object.entries(c)
            .filter(([k]) => k !== "p50Ms" && k !== "maxMs")
            .map(([k, n]) => `${k} ${n}`)
            .join(", ")} (p50 ${c.p50Ms ?? "-"} ms, max ${c.maxMs ?? "-"} ms)`,
      )
      .join("; ")}`,
    `simulated peers: ${r.fleet.sessionsExpired} sessions expired, ${r.fleet.accepted} acceptances, ${r.fleet.registrationsResent} registrations resent, ${r.fleet.jobsIgnored} jobs ignored (another session's)`,
    `signed peers: ${signed || "none"}`,
    `server: ${r.serverAlive ? "alive" : `died (${r.serverExit})`}`,
    r.failures.length === 0 ? "PASS" : `FAIL: ${r.failures.join("; ")}`,
  ].join("\n")
}
