#!/usr/bin/env node
import {
  type CatalogJob,
  CatalogStore,
  firstSignal,
  JobScheduler,
  layerRedisAcl,
  MAX_DEAD_LETTERS,
  Protocol,
  ReportStore,
  type Stores,
  TokenStore,
  Transport,
  TransportRedis,
} from "@picus/core"
import { cac } from "cac"
import { Cause, Console, Effect, Exit, Fiber, Layer, Redacted } from "effect"
import { OPEN_MODE_WARNING, PeerAccess } from "./access/PeerAccess.ts"
import { layerRedisPeerAccess, makeRedisUsers, type RedisUsers } from "./access/RedisPeerAccess.ts"
import type { RedisUserStore } from "./access/RedisUsers.ts"
import { CatalogError, loadCatalog } from "./catalog.ts"
import { claimServerId, ServerIdInUse } from "./claimServerId.ts"
import {
  type ClusterKey,
  ClusterKeyError,
  describeClusterKey,
  newClusterKey,
  writeNewKeyFile,
} from "./clusterKey.ts"
import {
  ConfigError,
  requireClusterKey,
  resolveServerConfig,
  type ServerConfig,
  type ServerFlags,
} from "./config.ts"
import { checkDatabase } from "./db/checkDatabase.ts"
import { connectEmbedded, defaultDataDir, EMBEDDED_POOL_SIZE } from "./db/embedded.ts"
import { ensureDatabase } from "./db/ensureDatabase.ts"
import { PgStore } from "./db/PgStore.ts"
import { countersLine } from "./db/statementCounter.ts"
import { addSeedPeer, createToken, revokeTokens } from "./enrollment.ts"
import { gatewayConfigFrom, makeGateway, untilSignal } from "./gateway/index.ts"
import { printRows } from "./report.ts"
import { InvalidJob, submitJobs, validateSubmission } from "./submit.ts"

const storeLayer = (config: ServerConfig) =>
  Layer.unwrap(ensureDatabase(config.databaseUrl).pipe(Effect.as(PgStore.layer(config.databaseUrl))))

/** The servers' Redis: URL, prefix and TLS, for the transport and the Redis users. */
const redisOf = (config: ServerConfig) => ({
  url: config.redisUrl,
  prefix: config.redisPrefix,
  ...(config.redisTls === undefined ? {} : { tls: config.redisTls }),
})
const transportLayer = (config: ServerConfig) => TransportRedis.layerRedis(redisOf(config))

/** The database index of a Redis URL (peers select the same one). */
const redisDbOf = (url: string): number => {
  try {
    return Number(new URL(url).pathname.slice(1)) || 0
  } catch {
    return 0
  }
}

/**
 * Who may use Redis as which peer: with Redis users (the default), each peer its own, reconciled
 * with PostgreSQL while the server runs; off, nobody (said loudly).
 */
const peerAccessLayer = (config: ServerConfig): Layer.Layer<PeerAccess, unknown, RedisUserStore> =>
  config.redisUsers
    ? layerRedisPeerAccess({ prefix: config.redisPrefix, db: redisDbOf(config.redisUrl) }).pipe(
        Layer.provide(layerRedisAcl(redisOf(config))),
      )
    : Layer.merge(
        PeerAccess.layerOpen,
        Layer.effectDiscard(Effect.logWarning(`${OPEN_MODE_WARNING} (PICUS_REDIS_USERS=off)`)),
      )

/** Runs `body` with the Redis users' operations when the servers use them, else with undefined. */
const withRedisUsers = <A, E, R>(
  config: ServerConfig,
  body: (users: RedisUsers | undefined) => Effect.Effect<A, E, R>,
) =>
  config.redisUsers
    ? makeRedisUsers({ prefix: config.redisPrefix, db: redisDbOf(config.redisUrl) }).pipe(
        Effect.flatMap(body),
        Effect.provide(layerRedisAcl(redisOf(config))),
      )
    : body(undefined)

/** A Redis URL for a login, without the servers' own (user names have colons: encoded). */
const redisUrlFor = (url: string, user: string, password: string): string => {
  const parsed = new URL(url)
  parsed.username = encodeURIComponent(user)
  parsed.password = encodeURIComponent(password)
  return parsed.toString()
}

/** `kill -USR2 <pid>` prints the process's counters as one line on stdout (the bench reads them). */
const countersOnSignal = Effect.acquireRelease(
  Effect.sync(() => {
    const print = () => Effect.runFork(Effect.flatMap(countersLine, Console.log))
    process.on("SIGUSR2", print)
    return print
  }),
  (print) => Effect.sync(() => process.removeListener("SIGUSR2", print)),
)

const serve = (
  config: ServerConfig,
  clusterKey: ClusterKey,
  catalog: ReadonlyArray<CatalogJob>,
  signalled: Effect.Effect<NodeJS.Signals>,
) =>
  Effect.gen(function* () {
    const catalogStore = yield* CatalogStore
    // Before the gateway says this instance is alive: a second live process of the id is refused.
    const claimed = yield* claimServerId(config.serverId, config.leaseMs).pipe(
      Effect.as(true),
      Effect.raceFirst(signalled.pipe(Effect.as(false))),
    )
    if (!claimed) return yield* Effect.logInfo("stopped before serving")
    yield* catalogStore.replaceCatalog(catalog)
    const gateway = yield* makeGateway(gatewayConfigFrom(config, clusterKey))
    const running = yield* Effect.forkScoped(gateway.run)
    yield* countersOnSignal
    yield* Effect.logInfo(
      `server ${config.serverId} serving (${catalog.length} catalog jobs); Ctrl+C to stop`,
    )
    const signal = yield* untilSignal(running, signalled)
    yield* Effect.logInfo(`${signal}: shutting down`)
    yield* gateway.shutdown(config.shutdownReason)
    yield* Fiber.interrupt(running)
    yield* Effect.logInfo("stopped")
  }).pipe(
    Effect.scoped,
    Effect.provide(
      peerAccessLayer(config).pipe(
        Layer.provideMerge(
          JobScheduler.layer({ maxInFlight: config.maxInFlight }).pipe(
            Layer.provideMerge(storeLayer(config)),
            Layer.provideMerge(
              TransportRedis.layerRedis({
                ...redisOf(config),
                onConnection: (event) =>
                  console.error(TransportRedis.describeConnection(event, "set REDIS_URL or --redis-url")),
              }),
            ),
          ),
        ),
      ),
    ),
  )

/**
 * The Store of a read-only command: the database must exist and be migrated already, and is
 * neither created nor migrated (a mistyped name must not leave a new database behind).
 */
const readOnlyStoreLayer = (config: ServerConfig) =>
  Layer.unwrap(
    checkDatabase(config.databaseUrl).pipe(
      Effect.as(PgStore.layer(config.databaseUrl, { migrate: false, maxPoolSize: 2 })),
    ),
  )

/**
 * The Store a command works on: the configured database (created and migrated when needed, unless
 * `readOnly`), or `make dev`'s embedded one.
 */
const withStore = <A, E>(
  config: ServerConfig,
  body: Effect.Effect<A, E, Stores | RedisUserStore>,
  embedded = false,
  readOnly = false,
) =>
  body.pipe(
    Effect.provide(
      embedded
        ? Layer.unwrap(
            connectEmbedded(process.env.PICUS_DATA_DIR ?? defaultDataDir).pipe(
              Effect.map((url) => PgStore.layer(url, { maxPoolSize: EMBEDDED_POOL_SIZE })),
            ),
          )
        : readOnly
          ? readOnlyStoreLayer(config)
          : storeLayer(config),
    ),
  )

/** A mistake in what the user asked for (flags, arguments, a catalog file), not a failure while doing it. */
const isUsageError = (failure: unknown): boolean =>
  failure instanceof ConfigError ||
  failure instanceof ClusterKeyError ||
  failure instanceof InvalidJob ||
  failure instanceof CatalogError ||
  failure instanceof ServerIdInUse

/**
 * Runs a command's effect and exits with its outcome; failures are printed, not thrown. Exit code 2
 * for a usage or validation error (nothing was done), 1 for a failure while running.
 */
const runCommand = (effect: Effect.Effect<unknown, unknown>) => {
  Effect.runPromiseExit(effect).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(0)
    const failure = Cause.squash(exit.cause)
    console.error(`error: ${failure instanceof Error ? failure.message : String(failure)}`)
    process.exit(isUsageError(failure) ? 2 : 1)
  })
}

const cli = cac("picus-server")
const sharedOptions = (command: ReturnType<typeof cli.command>) =>
  command
    .option("--database-url <url>", "PostgreSQL URL (env DATABASE_URL)")
    .option("--redis-url <url>", "Redis URL, a /db index is honoured (env REDIS_URL)")
    .option("--redis-prefix <prefix>", "Prefix of every Redis key (env PICUS_REDIS_PREFIX, default picus)")
    .option(
      "--redis-users <on|off>",
      "A Redis user per peer, limited to what it needs (env PICUS_REDIS_USERS, default on; off: open mode)",
    )

sharedOptions(cli.command("[start]", "Run the server (applies migrations first)"))
  .option("--server-id <id>", "This instance's name (env PICUS_SERVER_ID, default host-pid)")
  .option("--catalog <file>", "Job catalog JSON replacing the built-in one (env PICUS_CATALOG)")
  .option("--shutdown-reason <text>", "Reason sent to peers on Ctrl+C (env PICUS_SHUTDOWN_REASON)")
  .option("--heartbeat-ms <ms>", "Heartbeat interval asked of peers (env PICUS_HEARTBEAT_MS, default 5000)")
  .option(
    "--grace-ms <ms>",
    "Silence before a peer is logged out as timeout (env PICUS_GRACE_MS, default 3 heartbeats)",
  )
  .option(
    "--drain-ms <ms>",
    "At shutdown, wait this long for running jobs' results (env PICUS_DRAIN_MS, default 3000)",
  )
  .option(
    "--max-in-flight <n>",
    "Jobs sent to one peer before it answers (env PICUS_MAX_IN_FLIGHT, default 8)",
  )
  .option(
    "--lease-ms <ms>",
    "An instance silent this long is taken for dead; others close its sessions (env PICUS_LEASE_MS, default 15000)",
  )
  .option(
    "--cluster-key-file <file>",
    "The cluster key, mode 0600 (env PICUS_CLUSTER_KEY_FILE, or the key itself in PICUS_CLUSTER_KEY)",
  )
  .example("PICUS_TOKENS=secret1,secret2 picus-server   # accept these enrollment tokens too")
  .action((_: unknown, flags: ServerFlags) =>
    runCommand(
      // Listen for Ctrl+C before anything starts, so a signal during start-up still stops cleanly.
      firstSignal().pipe(
        Effect.flatMap((signalled) => {
          const config = resolveServerConfig(flags)
          // No cluster key, or a bad catalog, refuses the start before anything connects.
          const clusterKey = requireClusterKey(config)
          return loadCatalog(config.catalogPath).pipe(
            Effect.flatMap((catalog) => serve(config, clusterKey, catalog, signalled)),
          )
        }),
        Effect.scoped,
      ),
    ),
  )

cli
  .command(
    "cluster-key <action>",
    "The key servers sign with and derive session tokens from: new [--out file], show",
  )
  .option("--out <file>", "new: write the key to this file (mode 0600) instead of printing it")
  .option("--cluster-key-file <file>", "show: the key file (env PICUS_CLUSTER_KEY_FILE or PICUS_CLUSTER_KEY)")
  .example("picus-server cluster-key new --out /etc/picus/cluster.key")
  .action((action: string, flags: ServerFlags & { out?: string }) => {
    switch (action) {
      case "new":
        return runCommand(
          Effect.gen(function* () {
            if (flags.out === undefined) {
              // Printed once, on stdout alone, so that `> file` captures nothing else.
              const key = newClusterKey()
              yield* Console.log(Redacted.value(key.seed))
              for (const line of describeClusterKey(key)) yield* Console.error(line)
              return
            }
            const key = yield* Effect.try({
              try: () => writeNewKeyFile(String(flags.out)),
              catch: (error) => error,
            })
            yield* Console.log(`cluster key written to ${flags.out} (mode 0600)`)
            for (const line of describeClusterKey(key)) yield* Console.log(line)
          }),
        )
      case "show":
        return runCommand(
          Effect.gen(function* () {
            const key = requireClusterKey(resolveServerConfig(flags))
            for (const line of describeClusterKey(key)) yield* Console.log(line)
          }),
        )
      default:
        return runCommand(Effect.fail(new ConfigError(`unknown cluster-key action "${action}" (new, show)`)))
    }
  })

sharedOptions(cli.command("migrate", "Apply pending database migrations and exit")).action(
  (flags: ServerFlags) =>
    runCommand(withStore(resolveServerConfig(flags), Console.log("migrations applied"))),
)

sharedOptions(
  cli.command("token <action> [target]", "Enrollment tokens: create [--name], list, revoke <id|prefix>"),
)
  .option("--name <name>", "A label for a new token", { default: "peer" })
  .option("--json", "Machine-readable output")
  .action(
    (action: string, target: string | undefined, flags: ServerFlags & { name: string; json?: boolean }) => {
      const config = resolveServerConfig(flags)
      switch (action) {
        case "create":
          return runCommand(
            Effect.suspend(() => {
              // Read before anything is written: a bad key refuses the command.
              const clusterKey = config.clusterKey?.publicKey
              return withStore(
                config,
                withRedisUsers(config, (users) =>
                  Effect.gen(function* () {
                    const created = yield* createToken(String(flags.name), { users, clusterKey })
                    if (flags.json)
                      return yield* Console.log(
                        JSON.stringify({
                          token: created.secret,
                          id: created.tokenId,
                          name: created.name,
                          enrollment: created.enrollment ?? null,
                          redis_user: created.redisUser ?? null,
                        }),
                      )
                    yield* Console.log(created.enrollment ?? created.secret)
                    yield* Console.error(
                      created.enrollment === undefined
                        ? `token ${created.tokenId} (${created.name}) created; it is shown only this once. No enrollment string: PICUS_CLUSTER_KEY is not set`
                        : `token ${created.tokenId} (${created.name}) created: above is its enrollment string for a new peer (--enroll), shown only this once`,
                    )
                  }),
                ),
              )
            }),
          )
        case "list":
          return runCommand(
            withStore(
              config,
              Effect.gen(function* () {
                const store = yield* TokenStore
                const tokens = yield* store.listTokens
                printRows(
                  tokens.map((t) => ({
                    id: t.tokenId,
                    name: t.name,
                    prefix: t.prefix,
                    peer: t.peerId ?? "",
                    created: new Date(t.createdAt).toISOString(),
                    revoked: t.revokedAt === null ? "" : new Date(t.revokedAt).toISOString(),
                  })),
                  flags.json === true,
                )
              }),
              false,
              true,
            ),
          )
        case "revoke":
          if (!target)
            return runCommand(Effect.fail(new ConfigError("token revoke needs a token id or prefix")))
          return runCommand(
            withStore(
              config,
              withRedisUsers(config, (users) =>
                Effect.gen(function* () {
                  const { tokenIds, ended, droppedUsers } = yield* revokeTokens(target, { users })
                  if (tokenIds.length === 0)
                    return yield* Effect.fail(new ConfigError(`no active token matches "${target}"`))
                  yield* Console.log(
                    `revoked ${tokenIds.length} token(s); ended ${ended.length} session(s); dropped ${droppedUsers.length} Redis user(s)`,
                  )
                }),
              ).pipe(Effect.provide(transportLayer(config))),
            ),
          )
        default:
          return runCommand(
            Effect.fail(new ConfigError(`unknown token action "${action}" (create, list, revoke)`)),
          )
      }
    },
  )

sharedOptions(
  cli.command(
    "peer <action> <id>",
    "Seed peers: add <id> provisions one (a token for that id alone, and its Redis user)",
  ),
)
  .option("--json", "Machine-readable output")
  .example("picus-server peer add web-7   # prints the token and Redis login once")
  .action((action: string, id: string, flags: ServerFlags & { json?: boolean }) => {
    if (action !== "add")
      return runCommand(Effect.fail(new ConfigError(`unknown peer action "${action}" (add)`)))
    const peerId = String(id)
    if (peerId === "" || [...peerId].length > Protocol.MAX_ID_LENGTH)
      return runCommand(
        Effect.fail(
          new ConfigError(`a peer id is 1 to ${Protocol.MAX_ID_LENGTH} characters, got "${peerId}"`),
        ),
      )
    const config = resolveServerConfig(flags)
    return runCommand(
      withStore(
        config,
        withRedisUsers(config, (users) =>
          Effect.gen(function* () {
            const { secret, tokenId, redis } = yield* addSeedPeer(peerId, { users })
            const url = redis ? redisUrlFor(config.redisUrl, redis.user, redis.password) : undefined
            if (flags.json)
              return yield* Console.log(
                JSON.stringify({
                  peer_id: peerId,
                  token: secret,
                  id: tokenId,
                  redis_user: redis?.user ?? null,
                  redis_password: redis?.password ?? null,
                  redis_url: url ?? null,
                }),
              )
            yield* Console.log(`token:          ${secret}`)
            if (redis) {
              yield* Console.log(`redis user:     ${redis.user}`)
              yield* Console.log(`redis password: ${redis.password}`)
              yield* Console.log(`redis url:      ${url}`)
            }
            yield* Console.error(
              `seed peer ${peerId} provisioned (token ${tokenId}, for this peer id only); shown only this once${redis ? "" : `. ${OPEN_MODE_WARNING}`}`,
            )
          }),
        ),
      ),
    )
  })

sharedOptions(
  cli.command(
    "submit <peer> <command>",
    "Submit a shell command to one peer; it runs as soon as the peer is online",
  ),
)
  .option("--name <name>", "A name for the job", { default: "adhoc" })
  .option("--timeout-ms <ms>", "The job's timeout on the peer", { default: 30_000 })
  .option("--json", "Machine-readable output")
  .example('picus-server submit web-7 "df -h /"')
  .action(
    (
      peer: string,
      command: string,
      flags: ServerFlags & { name: string; timeoutMs: number; json?: boolean },
    ) => {
      const config = resolveServerConfig(flags)
      const request = {
        peerId: String(peer),
        submittedBy: "cli",
        jobs: [{ name: String(flags.name), command: String(command), timeoutMs: Number(flags.timeoutMs) }],
      }
      return runCommand(
        // Checked before the database is even opened: what the wire cannot carry is never written.
        validateSubmission(request).pipe(
          Effect.andThen(
            withStore(
              config,
              Effect.gen(function* () {
                const { tickets, ownerId } = yield* submitJobs(request)
                const [ticket] = tickets
                if (flags.json)
                  return yield* Console.log(
                    JSON.stringify({ ticket: ticket?.ticket, server_id: ownerId ?? null }),
                  )
                yield* Console.log(
                  `ticket ${ticket?.ticket}: ${ownerId ? `sent to ${peer} through ${ownerId}` : `waits for ${peer} to log in`}`,
                )
              }).pipe(
                Effect.provide(
                  TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix }),
                ),
              ),
            ),
          ),
        ),
      )
    },
  )

sharedOptions(
  cli.command(
    "deadletters [action] [...ids]",
    "Uplink entries set aside as unhandleable: list, retry <id...|--all>, drop <id...|--all>",
  ),
)
  .option("--all", "retry or drop every dead letter")
  .option("--limit <n>", "Most rows listed", { default: 100 })
  .option("--json", "Machine-readable output")
  .example("picus-server deadletters retry --all   # after fixing what refused them")
  .action(
    (
      action: string | undefined,
      ids: ReadonlyArray<string>,
      flags: ServerFlags & { all?: boolean; limit: number; json?: boolean },
    ) => {
      const config = resolveServerConfig(flags)
      const verb = action ?? "list"
      if (!["list", "retry", "drop"].includes(verb))
        return runCommand(
          Effect.fail(new ConfigError(`unknown deadletters action "${verb}" (list, retry, drop)`)),
        )
      if (verb !== "list" && ids.length === 0 && flags.all !== true)
        return runCommand(Effect.fail(new ConfigError(`deadletters ${verb} needs dead-letter ids or --all`)))
      return runCommand(
        Effect.gen(function* () {
          const transport = yield* Transport
          if (verb === "list") {
            const letters = yield* transport.deadLetters(Number(flags.limit))
            return printRows(
              letters.map((d) => ({
                id: d.id,
                at: new Date(d.at).toISOString(),
                attempts: d.attempts,
                server_id: d.serverId,
                reason: d.reason,
                ...(flags.json ? { payload: d.payload } : {}),
              })),
              flags.json === true,
            )
          }
          const chosen =
            flags.all === true ? (yield* transport.deadLetters(MAX_DEAD_LETTERS)).map((d) => d.id) : ids
          const count =
            verb === "retry"
              ? yield* transport.retryDeadLetters(chosen)
              : yield* transport.dropDeadLetters(chosen)
          yield* Console.log(
            `${verb === "retry" ? "put back on the uplink" : "dropped"}: ${count} dead letter(s)`,
          )
        }).pipe(
          Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
        ),
      )
    },
  )

type ReportFlags = ServerFlags & { peer?: string; limit: number; json?: boolean; embedded?: boolean }

/** A read-only report over the Store: rows for people, or JSON with --json. */
const reportCommand = (
  name: string,
  description: string,
  rowsOf: (
    store: ReportStore["Service"],
    filter: { readonly limit: number; readonly peerId?: string },
    json: boolean,
  ) => Effect.Effect<ReadonlyArray<Record<string, unknown>>, unknown>,
) =>
  sharedOptions(cli.command(name, description))
    .option("--embedded", "Read make dev's embedded database (folder PICUS_DATA_DIR, default .data)")
    .option("--peer <id>", "Only this peer")
    .option("--limit <n>", "Most rows", { default: 50 })
    .option("--json", "Machine-readable output")
    .action((flags: ReportFlags) =>
      runCommand(
        withStore(
          resolveServerConfig(flags),
          Effect.gen(function* () {
            const filter = { limit: Number(flags.limit), ...(flags.peer ? { peerId: flags.peer } : {}) }
            printRows(yield* rowsOf(yield* ReportStore, filter, flags.json === true), flags.json === true)
          }),
          flags.embedded === true,
          true,
        ),
      ),
    )

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

reportCommand("sessions", "Peer sessions: login, logout, duration, reason", (store, filter) =>
  store.sessions(filter).pipe(
    Effect.map((rows) =>
      rows.map((s) => ({
        peer_id: s.peerId,
        login_at: iso(s.loginAt),
        logout_at: iso(s.logoutAt),
        duration_s: Math.round(s.durationMs / 100) / 10,
        logout_reason: s.logoutReason,
        server_id: s.serverId,
      })),
    ),
  ),
)

reportCommand("results", "Job results, newest first", (store, filter, json) =>
  store.results(filter).pipe(
    Effect.map((rows) =>
      rows.map((r) => ({
        ticket: r.ticket,
        peer_id: r.peerId,
        job: r.jobName,
        status: r.status,
        exit_code: r.exitCode,
        output: json ? r.output : (r.output.split("\n")[0] ?? "").slice(0, 60),
        received_at: iso(r.receivedAt),
      })),
    ),
  ),
)

cli.help()
try {
  cli.parse()
} catch (error) {
  console.error(`error: ${error instanceof Error ? error.message : String(error)}`)
  process.exit(2)
}
