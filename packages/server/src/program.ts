/** The server's command line: `picus server` (and `pnpm --filter server start`) runs one instance. */
import {
  type CatalogJob,
  CatalogStore,
  firstSignal,
  JobScheduler,
  type Logging,
  type LoggingFlags,
  loggingFrom,
  loggingOptions,
  runCommand,
  TransportRedis,
} from "@picus/core"
import { cac } from "cac"
import { Console, Effect, Fiber, Layer } from "effect"
import { loadCatalog } from "./catalog.ts"
import { claimServerId } from "./claimServerId.ts"
import type { ClusterKey } from "./clusterKey.ts"
import { requireClusterKey, resolveServerConfig, type ServerConfig, type ServerFlags } from "./config.ts"
import { countersLine } from "./db/statementCounter.ts"
import { sharedOptions } from "./flags.ts"
import { gatewayConfigFrom, makeGateway, untilSignal } from "./gateway/index.ts"
import { isUsageError, peerAccessLayer, redisOf, storeLayer } from "./layers.ts"

/** `kill -USR2 <pid>` prints the process's counters as one line on stdout (the bench reads them). */
const countersOnSignal = Effect.acquireRelease(
  Effect.sync(() => {
    const print = () => Effect.runFork(Effect.flatMap(countersLine, Console.log))
    process.on("SIGUSR2", print)
    return print
  }),
  (print) => Effect.sync(() => process.removeListener("SIGUSR2", print)),
)

export const serve = (
  config: ServerConfig,
  clusterKey: ClusterKey,
  catalog: ReadonlyArray<CatalogJob>,
  signalled: Effect.Effect<NodeJS.Signals>,
  logging?: Pick<Logging, "say">,
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
    if (config.http !== undefined) {
      // Loaded only when asked for: the HTTP server's modules weigh on every command's start.
      const { layerHttpSurface, READY_READ_WITHIN_MS } = yield* Effect.promise(
        () => import("./http/HttpSurface.ts"),
      )
      yield* Layer.build(
        layerHttpSurface(config.http, {
          status: gateway.status,
          leaseMs: config.leaseMs,
          readWithinMs: READY_READ_WITHIN_MS,
        }),
      )
      yield* Effect.logInfo(
        `HTTP on ${config.http.host}:${config.http.port} (/healthz, /readyz, /metrics, /api/, the dashboard at /)`,
      )
    }
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
                onConnection: (event) => {
                  const line = TransportRedis.describeConnection(event, TransportRedis.REDIS_HINT)
                  const level = event._tag === "Unreachable" ? "warn" : "info"
                  if (logging) logging.say(line, { level, stderr: true })
                  else console.error(line)
                },
              }),
            ),
          ),
        ),
      ),
    ),
  )

/** The server's program, named `name` in its help. */
export const serverProgram = (name: string) => {
  const cli = cac(name)
  loggingOptions(sharedOptions(cli.command("", "Run a server instance (applies migrations first)")))
    .option("--server-id <id>", "This instance's name (env PICUS_SERVER_ID, default host-pid)")
    .option("--catalog <file>", "Job catalog, JSON or YAML, replacing the built-in one (env PICUS_CATALOG)")
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
      "--retain-days <days>",
      "Keep results, finished tickets and log rows this many days (env PICUS_RETAIN_DAYS, default 30; 0 keeps all)",
    )
    .option(
      "--http <host:port>",
      "Serve /healthz, /readyz, /metrics, the API (/api/) and the dashboard (/) there (env PICUS_HTTP; a bare port binds 127.0.0.1; default off)",
    )
    .option(
      "--cluster-key-file <file>",
      "The cluster key, mode 0600 (env PICUS_CLUSTER_KEY_FILE, or the key itself in PICUS_CLUSTER_KEY)",
    )
    .example(`PICUS_TOKENS=secret1,secret2 ${name}   # accept these enrollment tokens too`)
    .action((flags: ServerFlags & LoggingFlags) => {
      const logging = loggingFrom(flags)
      runCommand(
        // Listen for Ctrl+C before anything starts, so a signal during start-up still stops cleanly.
        firstSignal().pipe(
          Effect.flatMap((signalled) => {
            const config = resolveServerConfig(flags)
            // No cluster key, or a bad catalog, refuses the start before anything connects.
            const clusterKey = requireClusterKey(config)
            return loadCatalog(config.catalogPath).pipe(
              Effect.flatMap((catalog) => serve(config, clusterKey, catalog, signalled, logging)),
            )
          }),
          Effect.scoped,
          Effect.provide(logging.layer),
        ),
        isUsageError,
        logging.fail,
      )
    })
  return cli
}
