#!/usr/bin/env node
import { firstSignal, Protocol, TransportRedis } from "@picus/core"
import { cac } from "cac"
import { Cause, Effect, Exit } from "effect"
import { type AgentExit, makeAgent } from "./Agent.ts"
import { detectOs } from "./osInfo.ts"
import { adoptLegacyState, lockStateDir, openStateFile, resolveStateDir } from "./state.ts"

const AGENT_VERSION = "0.1.0"

interface PeerFlags {
  readonly token?: string
  readonly peerId?: string
  readonly redisUrl?: string
  readonly redisPrefix?: string
  readonly serverIp?: string
  readonly stateDir?: string
  readonly exitOnShutdown?: boolean
  readonly concurrency?: number | string
  readonly outputCap?: number | string
}

const fail = (message: string): never => {
  console.error(`error: ${message}`)
  process.exit(2)
}

const positiveInt = (name: string, value: number | string | undefined, fallback: number): number => {
  if (value === undefined || value === "") return fallback
  const n = Number(value)
  return Number.isInteger(n) && n > 0 ? n : fail(`${name} must be a positive whole number, got "${value}"`)
}

const run = (flags: PeerFlags) => {
  const env = process.env
  const token =
    flags.token ?? env.PICUS_TOKEN ?? fail("an enrollment token is needed: --token or PICUS_TOKEN")
  const redisUrl = flags.redisUrl ?? env.REDIS_URL ?? "redis://127.0.0.1:6379"
  // cac turns a numeric flag into a number.
  const peerId = flags.peerId === undefined ? env.PICUS_PEER_ID || undefined : String(flags.peerId)
  const stateDir = resolveStateDir({ stateDir: flags.stateDir ?? env.PICUS_STATE_DIR, peerId })
  try {
    lockStateDir(stateDir)
  } catch (error) {
    fail(error instanceof Error ? error.message : String(error))
  }
  const explicitDir = (flags.stateDir ?? env.PICUS_STATE_DIR ?? "") !== ""
  if (peerId !== undefined && !explicitDir) {
    const legacyDir = resolveStateDir({ stateDir: undefined, peerId: undefined })
    if (adoptLegacyState({ legacyDir, dir: stateDir, peerId }))
      console.log(`moved this peer's state from ${legacyDir} to ${stateDir}`)
  }
  const state = openStateFile(stateDir, peerId)
  const program = Effect.gen(function* () {
    const signalled = yield* firstSignal()
    const agent = yield* makeAgent({
      token,
      serverIp: flags.serverIp ?? env.PICUS_SERVER_IP ?? new URL(redisUrl).hostname,
      os: detectOs(),
      state,
      agentVersion: AGENT_VERSION,
      concurrency: positiveInt("--concurrency", flags.concurrency ?? env.PICUS_CONCURRENCY, 4),
      outputCapBytes: positiveInt("--output-cap", flags.outputCap ?? env.PICUS_OUTPUT_CAP, 64 * 1024),
      defaultTimeoutMs: 60_000,
      exitOnShutdown: flags.exitOnShutdown === true || env.PICUS_EXIT_ON_SHUTDOWN === "1",
      registerTimeoutMs: 30_000,
      reconnectBaseMs: 1_000,
      reconnectMaxMs: 30_000,
    })
    const outcome = yield* agent.run.pipe(
      Effect.map((exit): AgentExit | "signal" => exit),
      Effect.raceFirst(signalled.pipe(Effect.as("signal" as const))),
    )
    if (outcome === "signal") {
      yield* agent.logout(Protocol.LogoutReason.peerShutdown)
      console.log("logged out; bye")
      return 0
    }
    return outcome._tag === "Rejected" ? 1 : 0
  }).pipe(
    Effect.scoped,
    Effect.provide(
      TransportRedis.layerRedis({
        url: redisUrl,
        prefix: flags.redisPrefix ?? env.PICUS_REDIS_PREFIX ?? "picus",
        onConnection: (event) =>
          console.log(TransportRedis.describeConnection(event, "set REDIS_URL or --redis-url")),
      }),
    ),
  )

  console.log(`peer ${state.peerId} starting (state in ${stateDir})`)
  Effect.runPromiseExit(program).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(exit.value)
    const failure = Cause.squash(exit.cause)
    console.error(`error: ${failure instanceof Error ? failure.message : String(failure)}`)
    process.exit(1)
  })
}

const cli = cac("picus-peer")
cli
  .command("[start]", "Register with the server and run the jobs it sends")
  .option("--token <token>", "Enrollment token (env PICUS_TOKEN; prefer the env: flags show in ps)")
  .option(
    "--peer-id <id>",
    "This peer's id (env PICUS_PEER_ID; default an id made up once and kept in the default state folder)",
  )
  .option("--redis-url <url>", "Redis URL (env REDIS_URL)")
  .option("--redis-prefix <prefix>", "Prefix of every Redis key (env PICUS_REDIS_PREFIX, default picus)")
  .option(
    "--server-ip <ip>",
    "The server address reported at registration (env PICUS_SERVER_IP; default the Redis host)",
  )
  .option(
    "--state-dir <dir>",
    "Where the peer keeps its id, run tickets and kept results (env PICUS_STATE_DIR; default ~/.local/state/picus/peers/<peer id>); one peer at a time",
  )
  .option("--exit-on-shutdown", "Exit 0 when the server shuts down, instead of registering again")
  .option("--concurrency <n>", "Jobs run at once (env PICUS_CONCURRENCY, default 4)")
  .option("--output-cap <bytes>", "Output kept per job (env PICUS_OUTPUT_CAP, default 65536)")
  .action((_: unknown, flags: PeerFlags) => run(flags))
cli.help()
try {
  cli.parse()
} catch (error) {
  fail(error instanceof Error ? error.message : String(error))
}
