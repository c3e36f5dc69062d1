#!/usr/bin/env node
import {
  type CatalogJob,
  CatalogStore,
  firstSignal,
  JobScheduler,
  MAX_DEAD_LETTERS,
  ReportStore,
  type Stores,
  TokenStore,
  Transport,
  TransportRedis,
} from "@picus/core"
import { cac } from "cac"
import { Cause, Console, Effect, Exit, Fiber, Layer, Redacted } from "effect"
import { PeerAccess } from "./access/PeerAccess.ts"
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
import { gatewayConfigFrom, makeGateway, untilSignal } from "./gateway/index.ts"
import { printRows } from "./report.ts"
import { InvalidJob, submitJobs, validateSubmission } from "./submit.ts"
import { createEnrollmentToken } from "./tokens.ts"

const storeLayer = (config: ServerConfig) =>
  Layer.unwrap(ensureDatabase(config.databaseUrl).pipe(Effect.as(PgStore.layer(config.databaseUrl))))

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
      JobScheduler.layer({ maxInFlight: config.maxInFlight }).pipe(
        // Open access until Redis users per peer come (see PeerAccess).
        Layer.merge(PeerAccess.layerOpen),
        Layer.provideMerge(storeLayer(config)),
        Layer.provideMerge(
          TransportRedis.layerRedis({
            url: config.redisUrl,
            prefix: config.redisPrefix,
            onConnection: (event) =>
              console.error(TransportRedis.describeConnection(event, "set REDIS_URL or --redis-url")),
          }),
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
  body: Effect.Effect<A, E, Stores>,
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
            withStore(
              config,
              Effect.gen(function* () {
                const { secret, info } = yield* createEnrollmentToken(String(flags.name))
                if (flags.json)
                  return yield* Console.log(
                    JSON.stringify({ token: secret, id: info.tokenId, name: info.name }),
                  )
                yield* Console.log(secret)
                yield* Console.error(
                  `token ${info.tokenId} (${info.name}) created; it is shown only this once`,
                )
              }),
            ),
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
              Effect.gen(function* () {
                const store = yield* TokenStore
                const count = yield* store.revokeToken(target)
                if (count === 0)
                  return yield* Effect.fail(new ConfigError(`no active token matches "${target}"`))
                yield* Console.log(`revoked ${count} token(s)`)
              }),
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
