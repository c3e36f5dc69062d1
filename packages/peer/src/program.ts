/** The peer's command line: `picus peer` (and `pnpm --filter peer start`) runs one peer. */
import {
  explainSource,
  firstSignal,
  type Logging,
  type LoggingFlags,
  loggingFrom,
  loggingOptions,
  PICUS_VERSION,
  Protocol,
  redisPasswordOf,
  TransportRedis,
  Trust,
} from "@picus/core"
import { cac } from "cac"
import { Cause, Effect, Exit, Fiber, Result } from "effect"
import { type AgentExit, makeAgent } from "./Agent.ts"
import { parseLabels } from "./labels.ts"
import { detectOs } from "./osInfo.ts"
import { adoptLegacyState, lockStateDir, openStateFile, resolveStateDir, type StateFile } from "./state.ts"
import { type ClusterKeyPin, parseClusterKeyPin, resolveTrust } from "./trust.ts"

const AGENT_VERSION = PICUS_VERSION

interface PeerFlags extends LoggingFlags {
  readonly enroll?: string
  readonly token?: string
  readonly clusterKey?: string
  readonly trustOnFirstUse?: boolean
  readonly peerId?: string
  readonly redisUrl?: string
  readonly redisPrefix?: string
  readonly serverIp?: string
  readonly stateDir?: string
  readonly exitOnShutdown?: boolean
  readonly concurrency?: number | string
  readonly outputCap?: number | string
  readonly label?: string | ReadonlyArray<string>
  readonly osRelease?: string
}

/** How a mistake is told: set once the logging is known (a JSON line with --log-format json). */
let tell = (message: string) => console.error(`error: ${message}`)

const fail = (message: string): never => {
  tell(explainSource(message))
  process.exit(2)
}

const positiveInt = (name: string, value: number | string | undefined, fallback: number): number => {
  if (value === undefined || value === "") return fallback
  const n = Number(value)
  return Number.isInteger(n) && n > 0 ? n : fail(`${name} must be a positive whole number, got "${value}"`)
}

const given = (value: string | undefined) => (value === undefined || value === "" ? undefined : value)

interface Enrolling {
  readonly token: string
  readonly clusterKey: ClusterKeyPin | undefined
  /** The enrollment's Redis user and its password (derived from the token). */
  readonly redisUser: { readonly user: string; readonly password: string } | undefined
}

/**
 * What the peer enrolls with: an enrollment string (token, cluster key, Redis user), or a token
 * and, if given, the cluster key. Never quotes either: both hold a secret or sit beside one.
 */
const enrollingFrom = (flags: PeerFlags, env: NodeJS.ProcessEnv): Enrolling => {
  const enrollment = given(flags.enroll) ?? given(env.PICUS_ENROLL)
  const token = given(flags.token) ?? given(env.PICUS_TOKEN)
  const clusterKey = given(flags.clusterKey) ?? given(env.PICUS_CLUSTER_PUBLIC_KEY)
  if (enrollment !== undefined) {
    if (token !== undefined) {
      fail(
        "give the enrollment string (--enroll, PICUS_ENROLL) or a token (--token, PICUS_TOKEN), not both: the enrollment string holds the token",
      )
    }
    if (clusterKey !== undefined) {
      fail("the enrollment string carries the cluster key: drop --cluster-key (or PICUS_CLUSTER_PUBLIC_KEY)")
    }
    const decoded = Trust.decodeEnrollment(enrollment)
    if (Result.isFailure(decoded)) {
      return fail(
        `the enrollment string (--enroll or PICUS_ENROLL) cannot be used: ${decoded.failure}; ask the operator for a new one if it stays so`,
      )
    }
    const key = parseClusterKeyPin(decoded.success.clusterKey)
    if (Result.isFailure(key) || key.success._tag !== "Key") {
      return fail("the enrollment string's cluster key is damaged (copy it again, whole)")
    }
    const { redisUser } = decoded.success
    return {
      token: decoded.success.token,
      clusterKey: key.success,
      redisUser:
        redisUser === undefined
          ? undefined
          : { user: redisUser, password: redisPasswordOf(decoded.success.token) },
    }
  }
  if (token === undefined) {
    return fail("an enrollment string is needed: --enroll or PICUS_ENROLL (or --token with --cluster-key)")
  }
  if (clusterKey === undefined) return { token, clusterKey: undefined, redisUser: undefined }
  const key = parseClusterKeyPin(clusterKey)
  if (Result.isFailure(key)) return fail(`--cluster-key (or PICUS_CLUSTER_PUBLIC_KEY): ${key.failure}`)
  return { token, clusterKey: key.success, redisUser: undefined }
}

const run = (flags: PeerFlags) => {
  const env = process.env
  const logging: Logging = loggingFrom(flags, env)
  tell = logging.fail
  const enrolling = enrollingFrom(flags, env)
  const trustOnFirstUse = flags.trustOnFirstUse === true || env.PICUS_TRUST_ON_FIRST_USE === "1"
  const givenUrl = flags.redisUrl ?? env.REDIS_URL ?? "redis://127.0.0.1:6379"
  let parsedUrl: URL
  try {
    parsedUrl = new URL(givenUrl)
  } catch {
    // Not quoted: it may hold a password.
    parsedUrl = fail(
      "the Redis URL (--redis-url or REDIS_URL) is not a URL: redis://[user:password@]host:port",
    )
  }
  // The enrollment's Redis user, unless the URL names one of its own. Both it and a session's user
  // may run only a peer's commands, so their connections send nothing but AUTH on connect.
  const enrollLogin =
    enrolling.redisUser !== undefined && parsedUrl.username === ""
      ? { username: enrolling.redisUser.user, password: enrolling.redisUser.password, restrictedLogin: true }
      : {}
  const tls = TransportRedis.redisTlsFromEnv(env)
  const tlsOption = tls === undefined ? {} : { tls }
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
      logging.say(`moved this peer's state from ${legacyDir} to ${stateDir}`)
  }
  let state: StateFile
  try {
    state = openStateFile(stateDir, peerId)
  } catch (error) {
    state = fail(error instanceof Error ? error.message : String(error))
  }
  const trust = resolveTrust({
    given: enrolling.clusterKey,
    trustOnFirstUse,
    pinned: state.pinnedClusterKey(),
  })
  if (Result.isFailure(trust)) fail(trust.failure.message)
  const prefix = flags.redisPrefix ?? env.PICUS_REDIS_PREFIX ?? "picus"
  const labels = parseLabels(flags.label, env.PICUS_LABELS)
  if (Result.isFailure(labels)) fail(labels.failure)
  const osRelease = given(flags.osRelease) ?? given(env.PICUS_OS_RELEASE)
  const levelOf = (event: TransportRedis.RedisConnectionEvent) =>
    event._tag === "Unreachable" ? ("warn" as const) : ("info" as const)
  const onConnection = (event: TransportRedis.RedisConnectionEvent) =>
    logging.say(TransportRedis.describeConnection(event, TransportRedis.REDIS_HINT), {
      level: levelOf(event),
    })
  const program = Effect.gen(function* () {
    const signalled = yield* firstSignal()
    const agent = yield* makeAgent({
      token: enrolling.token,
      clusterKey: enrolling.clusterKey,
      trustOnFirstUse,
      // The session's own Redis user, in place of the enrollment's.
      sessionTransport: ({ user, password }) =>
        TransportRedis.layerRedis({
          url: givenUrl,
          username: user,
          password,
          restrictedLogin: true,
          ...tlsOption,
          prefix,
          onConnection: (event) =>
            logging.say(
              TransportRedis.describeConnection(
                event,
                "as this session's own Redis user; refused for long, the peer registers again",
              ),
              { level: levelOf(event) },
            ),
        }),
      serverIp: flags.serverIp ?? env.PICUS_SERVER_IP ?? parsedUrl.hostname,
      os: detectOs(osRelease),
      labels: Result.isSuccess(labels) ? labels.success : {},
      state,
      agentVersion: AGENT_VERSION,
      concurrency: positiveInt("--concurrency", flags.concurrency ?? env.PICUS_CONCURRENCY, 4),
      outputCapBytes: positiveInt("--output-cap", flags.outputCap ?? env.PICUS_OUTPUT_CAP, 64 * 1024),
      defaultTimeoutMs: 60_000,
      exitOnShutdown: flags.exitOnShutdown === true || env.PICUS_EXIT_ON_SHUTDOWN === "1",
      registerTimeoutMs: 30_000,
      say: logging.sayEffect,
      reconnectBaseMs: 1_000,
      reconnectMaxMs: 30_000,
    })
    const serving = yield* Effect.forkScoped(agent.run)
    const outcome = yield* Fiber.join(serving).pipe(
      Effect.map((exit): AgentExit | "signal" => exit),
      Effect.raceFirst(signalled.pipe(Effect.as("signal" as const))),
    )
    if (outcome === "signal") {
      // While the session (and its connection) is still open.
      yield* agent.logout(Protocol.LogoutReason.peerShutdown).pipe(Effect.timeout("5 seconds"), Effect.ignore)
      yield* Fiber.interrupt(serving)
      logging.say("logged out; bye")
      return 0
    }
    return outcome._tag === "Rejected" ? 1 : 0
  }).pipe(
    Effect.scoped,
    Effect.provide(
      TransportRedis.layerRedis({ url: givenUrl, ...enrollLogin, ...tlsOption, prefix, onConnection }),
    ),
    Effect.provide(logging.layer),
  )

  logging.say(`peer ${state.peerId} starting (state in ${stateDir})`)
  Effect.runPromiseExit(program).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(exit.value)
    const failure = Cause.squash(exit.cause)
    logging.fail(failure instanceof Error ? failure.message : String(failure))
    process.exit(1)
  })
}

/** The peer's program, named `name` in its help. */
export const peerProgram = (name: string) => {
  const cli = cac(name)
  loggingOptions(cli.command("", "Register with the server and run the jobs it sends"))
    .option(
      "--enroll <string>",
      "The enrollment string the operator gave (env PICUS_ENROLL; prefer the env: flags show in ps): the token, the cluster key and the Redis user",
    )
    .option("--token <token>", "Enrollment token, without an enrollment string (env PICUS_TOKEN)")
    .option(
      "--cluster-key <key>",
      "With --token: the cluster's public key, or sha256:<fingerprint> to pin the key of the first server showing it (env PICUS_CLUSTER_PUBLIC_KEY)",
    )
    .option(
      "--trust-on-first-use",
      "With no cluster key given or pinned: pin the key of the first server that answers, unchecked (env PICUS_TRUST_ON_FIRST_USE=1)",
    )
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
      "Where the peer keeps its id, identity key, pinned cluster key, run tickets and kept results (env PICUS_STATE_DIR; default ~/.local/state/picus/peers/<peer id>); one peer at a time",
    )
    .option(
      "--exit-on-shutdown",
      "Exit 0 when the server shuts down, instead of registering again (env PICUS_EXIT_ON_SHUTDOWN=1)",
    )
    .option("--concurrency <n>", "Jobs run at once (env PICUS_CONCURRENCY, default 4)")
    .option("--output-cap <bytes>", "Output kept per job (env PICUS_OUTPUT_CAP, default 65536)")
    .option(
      "--label <key=value>",
      "A label to target runs by, e.g. role=web (repeatable; env PICUS_LABELS=role=web,zone=a); keys are [a-z0-9_./-], at most 32",
    )
    .option(
      "--os-release <file>",
      "Where to read the distro from (env PICUS_OS_RELEASE, default /etc/os-release): for containers and tests",
    )
    .action((flags: PeerFlags) => run(flags))
  return cli
}
