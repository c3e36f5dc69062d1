#!/usr/bin/env node
import { randomBytes } from "node:crypto"
import { firstSignal, Protocol, Transport, TransportRedis } from "@picus/core"
import { cac } from "cac"
import { Cause, Context, Effect, Exit, Layer, type Scope } from "effect"
import { PgStore, submitJobs } from "server"
import { type Submit, submitAtRate } from "./rate.ts"
import { type FleetReport, makeSimulatedFleet, type OsLabels } from "./SimulatedFleet.ts"

const AGENT_VERSION = "loadgen-0.1.0"

interface LoadgenFlags {
  readonly peers?: number | string
  readonly duration?: number | string
  readonly rate?: number | string
  readonly redisUrl?: string
  readonly prefix?: string
  readonly databaseUrl?: string
  readonly token?: string
  readonly jobMs?: number | string
  readonly os?: string
  readonly distro?: string
  readonly ramp?: number | string
  readonly runId?: string | number
  readonly acceptTimeout?: number | string
  readonly json?: boolean
}

class UsageError extends Error {
  override readonly name = "UsageError"
}

const fail = (message: string): never => {
  console.error(`error: ${message}`)
  process.exit(2)
}

const number = (name: string, value: number | string | undefined, fallback: number, min = 0): number => {
  if (value === undefined || value === "") return fallback
  const n = Number(value)
  return Number.isFinite(n) && n >= min ? n : fail(`${name} must be a number >= ${min}, got "${value}"`)
}

export interface SubmitterOptions {
  readonly redisUrl: string
  readonly prefix: string
  readonly databaseUrl: string
}

/**
 * Ticket submission for --rate: creates a ticket for the peer's open session in PostgreSQL and
 * nudges the server that owns it. It belongs to the server package; until it is wired in here
 * there is none, and a nonzero --rate is refused.
 */
/**
 * Submits one small job per call, the way an operator's tool would: tickets written to PostgreSQL,
 * then the instance holding the peer's session told. The store is this process's own pool.
 */
const makeSubmitter = (options: SubmitterOptions): Effect.Effect<Submit, unknown, Scope.Scope | Transport> =>
  Effect.gen(function* () {
    const stores = yield* Layer.build(PgStore.layer(options.databaseUrl, { migrate: false }))
    const transport = yield* Transport
    const context = Context.add(stores, Transport, transport)
    return (peerId: string) =>
      submitJobs({
        peerId,
        submittedBy: "loadgen",
        jobs: [{ name: "load", command: "echo load", timeoutMs: 10_000 }],
      }).pipe(Effect.asVoid, Effect.provideContext(context))
  })

/** One progress line per second, on stderr (stdout is kept for the --json report). */
const progressLine = (report: FleetReport): string => {
  const last = report.perSecond.at(-1)
  const d = last?.delta
  const c = report.counters
  return [
    `${(report.elapsedMs / 1_000).toFixed(0)}s`,
    `online ${report.online}/${report.peers}`,
    `accepted ${report.acceptedPeers} (+${d?.accepted ?? 0}/s)`,
    `registrations ${c.registrationsSent}`,
    `rejected ${c.rejected}`,
    `heartbeats +${d?.heartbeatsSent ?? 0}/s`,
    `jobs ${c.jobsReceived} (+${d?.jobsReceived ?? 0}/s)`,
    `results ${c.resultsSent}`,
    ...(c.ticketsSubmitted + c.submitFailures > 0
      ? [`submitted ${c.ticketsSubmitted} (+${d?.ticketsSubmitted ?? 0}/s, ${c.submitFailures} failed)`]
      : []),
  ].join("  ")
}

const summary = (report: FleetReport): string => {
  const l = report.registerLatency
  const c = report.counters
  const ms = (v: number | null) => (v === null ? "-" : `${v} ms`)
  return [
    `peers ${report.peers} (run ${report.runId}), accepted ${report.acceptedPeers}, refused ${report.rejectedPeers}`,
    `all accepted after ${report.allAcceptedMs === null ? "never" : `${(report.allAcceptedMs / 1_000).toFixed(2)} s`}`,
    `register -> accepted: p50 ${ms(l.p50Ms)}, p90 ${ms(l.p90Ms)}, p99 ${ms(l.p99Ms)}, max ${ms(l.maxMs)} (${l.count} samples)`,
    `registrations sent ${c.registrationsSent} (${c.registrationsResent} again), rejected ${c.rejected} ${JSON.stringify(report.rejectReasons)}`,
    `heartbeats ${c.heartbeatsSent}, jobs ${c.jobsReceived} (${c.jobsIgnored} ignored), results ${c.resultsSent}`,
    `tickets submitted ${c.ticketsSubmitted} (${c.submitFailures} failed), shutdowns ${c.shutdowns}, sessions expired ${c.sessionsExpired}`,
    `logouts ${c.logoutsSent}, send failures ${c.sendFailures}, read failures ${c.readFailures}, malformed ${c.malformed}`,
  ].join("\n")
}

const run = (flags: LoadgenFlags) => {
  const env = process.env
  const token =
    flags.token ?? env.PICUS_TOKEN ?? fail("an enrollment token is needed: --token or PICUS_TOKEN")
  const redisUrl = flags.redisUrl ?? env.REDIS_URL ?? "redis://127.0.0.1:6379"
  const prefix = flags.prefix ?? env.PICUS_REDIS_PREFIX ?? "picus"
  const databaseUrl = flags.databaseUrl ?? env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/picus"
  const peers = number("--peers", flags.peers, 100, 1)
  const durationS = number("--duration", flags.duration, 0)
  const rate = number("--rate", flags.rate, 0)
  const acceptTimeoutS = number("--accept-timeout", flags.acceptTimeout, 300, 1)
  const osName = flags.os ?? "linux"
  const os: OsLabels | undefined =
    osName === "none" ? undefined : { os: osName, distro: flags.distro ?? "debian" }
  const runId = String(flags.runId ?? randomBytes(3).toString("hex"))
  const json = flags.json === true
  const progress = (line: string) => Effect.sync(() => console.error(line))

  const program = Effect.gen(function* () {
    const signalled = yield* firstSignal()
    const submit = rate > 0 ? yield* makeSubmitter({ redisUrl, prefix, databaseUrl }) : undefined
    if (rate > 0 && !submit)
      return yield* Effect.fail(new UsageError("--rate: ticket submission is not available"))

    const fleet = yield* makeSimulatedFleet({
      peers: Math.floor(peers),
      runId,
      token,
      serverIp: new URL(redisUrl).hostname,
      os,
      agentVersion: AGENT_VERSION,
      jobMs: number("--job-ms", flags.jobMs, 0),
      rampMs: number("--ramp", flags.ramp, 0) * 1_000,
      registerTimeoutMs: 30_000,
      reconnectBaseMs: 1_000,
      reconnectMaxMs: 30_000,
    })
    yield* progress(`${peers} simulated peers (sim-${runId}-*) registering on ${redisUrl} prefix ${prefix}`)
    yield* Effect.suspend(() => progress(progressLine(fleet.report()))).pipe(
      Effect.delay("1 second"),
      Effect.forever,
      Effect.forkScoped,
    )

    // Phase 1: until every peer is in (or one is refused for good, or time runs out).
    const joined = yield* Effect.raceAll([
      fleet.allAccepted.pipe(Effect.map((ms) => ({ _tag: "accepted" as const, ms }))),
      fleet.refused.pipe(Effect.map((reason) => ({ _tag: "refused" as const, reason }))),
      signalled.pipe(Effect.as({ _tag: "signal" as const })),
      Effect.sleep(acceptTimeoutS * 1_000).pipe(Effect.as({ _tag: "timeout" as const })),
    ])
    if (joined._tag === "accepted")
      yield* progress(`all ${peers} accepted after ${(joined.ms / 1_000).toFixed(2)} s`)
    if (joined._tag === "refused") yield* progress(`registration refused: ${joined.reason}`)
    if (joined._tag === "timeout") yield* progress(`not all peers accepted after ${acceptTimeoutS} s`)

    // Phase 2: the measured run.
    if (joined._tag === "accepted") {
      if (submit) {
        yield* submitAtRate({ rate, submit, nextPeer: fleet.nextOnline, count: fleet.countSubmission }).pipe(
          Effect.forkScoped,
        )
      }
      const ends = durationS > 0 ? Effect.sleep(durationS * 1_000) : Effect.never
      yield* Effect.raceFirst(ends, signalled)
    }

    yield* fleet.stop(Protocol.LogoutReason.peerShutdown)
    const report = fleet.report()
    yield* Effect.sync(() => console.log(json ? JSON.stringify(report) : summary(report)))
    return joined._tag === "accepted" ? 0 : 1
  }).pipe(
    Effect.scoped,
    Effect.provide(
      TransportRedis.layerRedis({
        url: redisUrl,
        prefix,
        ...(TransportRedis.redisTlsFromEnv() === undefined ? {} : { tls: TransportRedis.redisTlsFromEnv()! }),
      }),
    ),
  )

  Effect.runPromiseExit(program).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(exit.value)
    const failure = Cause.squash(exit.cause)
    console.error(`error: ${failure instanceof Error ? failure.message : String(failure)}`)
    process.exit(failure instanceof UsageError ? 2 : 1)
  })
}

const cli = cac("picus-loadgen")
cli
  .command("[start]", "Run a fleet of simulated peers against the server(s) on this Redis")
  .option("--peers <n>", "Simulated peers (default 100)")
  .option("--duration <s>", "Seconds to run once every peer is accepted; 0 runs until Ctrl+C (default 0)")
  .option("--rate <r>", "Tickets per second submitted for the simulated peers (default 0)")
  .option("--redis-url <url>", "Redis URL (env REDIS_URL)")
  .option("--prefix <prefix>", "Prefix of every Redis key (env PICUS_REDIS_PREFIX, default picus)")
  .option("--database-url <url>", "PostgreSQL, for submitting tickets with --rate (env DATABASE_URL)")
  .option("--token <token>", "Enrollment token (env PICUS_TOKEN; prefer the env: flags show in ps)")
  .option("--job-ms <ms>", "How long each simulated job takes before its result is sent (default 0)")
  .option(
    "--os <os>",
    'os sent at registration; "none" sends no os/distro, so only catalog jobs for any os (default linux)',
  )
  .option("--distro <distro>", "distro sent at registration (default debian)")
  .option("--ramp <s>", "Spread the first registrations over this many seconds (default 0: all at once)")
  .option("--run-id <id>", "Peers are named sim-<run-id>-<i> (default random)")
  .option(
    "--accept-timeout <s>",
    "Give up waiting for every peer to be accepted after this long (default 300)",
  )
  .option("--json", "Print the final report as JSON on stdout (progress stays on stderr)")
  .action((_: unknown, flags: LoadgenFlags) => run(flags))
cli.help()
try {
  cli.parse()
} catch (error) {
  fail(error instanceof Error ? error.message : String(error))
}
