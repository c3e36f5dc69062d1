#!/usr/bin/env node
import { join } from "node:path"
import {
  firstSignal,
  JobScheduler,
  newSecret,
  Store,
  Transport,
  TransportMemory,
  TransportRedis,
} from "@picus/core"
import { Cause, Console, Effect, Exit, Fiber, Layer, References, Stream } from "effect"
import { detectOs, makeAgent, openStateFile } from "peer"
import {
  createOperatorToken,
  DEFAULT_SHUTDOWN_REASON,
  defaultDataDir,
  EMBEDDED_POOL_OPTIONS,
  ensureDatabase,
  gatewayConfigFrom,
  keyFileOrNew,
  loadCatalog,
  makeGateway,
  OPEN_MODE_WARNING,
  PeerAccess,
  PgStore,
  resolveServerConfig,
  serveEmbedded,
  untilSignal,
} from "server"
import { makeLiveView, renderFeedPayload, stdoutWantsColor } from "./liveView.ts"
import { summarize } from "./summary.ts"

/**
 * `make dev`: the whole system in one process — a server and two peers, plus one peer with a wrong
 * token to show a rejection. On its own it runs on the embedded layers (PGlite in .data/, the
 * in-memory transport); given DATABASE_URL and REDIS_URL it uses the real services. The server and
 * peer code are the same either way: only this composition differs.
 */

const env = process.env
const useRealServices = Boolean(env.DATABASE_URL && env.REDIS_URL)
const dataDir = env.PICUS_DATA_DIR ?? defaultDataDir
// The HTTP side is on by default here (PICUS_HTTP=off turns it off, PICUS_HTTP=host:port moves it).
const config = resolveServerConfig({
  serverId: env.PICUS_SERVER_ID ?? "dev-server",
  http: env.PICUS_HTTP ?? "127.0.0.1:8080",
})
const render = makeLiveView({ color: stdoutWantsColor() })
const peerNames = ["peer-1", "peer-2"]

const storeLayer = useRealServices
  ? Layer.unwrap(ensureDatabase(config.databaseUrl).pipe(Effect.as(PgStore.layer(config.databaseUrl))))
  : Layer.unwrap(serveEmbedded(dataDir).pipe(Effect.map((url) => PgStore.layer(url, EMBEDDED_POOL_OPTIONS))))
const transportLayer = useRealServices
  ? TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })
  : TransportMemory.layerMemory

const run = (signalled: Effect.Effect<NodeJS.Signals>) =>
  Effect.gen(function* () {
    const startedAt = Date.now()
    const store = yield* Store
    const transport = yield* Transport

    yield* Console.log(
      useRealServices
        ? `picus dev: real services (${new URL(config.databaseUrl).host}, ${new URL(config.redisUrl).host})`
        : `picus dev: embedded PostgreSQL in ${dataDir}, in-memory transport`,
    )
    // make dev shares one Redis login between everyone: say so where nobody can miss it.
    yield* Console.log(`WARNING: ${OPEN_MODE_WARNING}`)
    yield* Console.log("Ctrl+C stops the server: the peers get shutdown, logouts are written.\n")

    // The live view listens to the same feed an operator would.
    yield* transport.subscribe.pipe(
      Stream.runForEach((payload) => {
        const text = renderFeedPayload(render, payload)
        return text === undefined ? Effect.void : Console.log(text)
      }),
      Effect.forkScoped,
    )
    yield* Effect.sleep("50 millis")

    yield* store.replaceCatalog(yield* loadCatalog(config.catalogPath))
    const devToken = newSecret("picus")
    // The dev setup makes its own cluster key, kept in its state folder: a restart keeps it, so the
    // peers' pinned key stays good.
    const clusterKey = config.clusterKey ?? keyFileOrNew(join(dataDir, "cluster.key"))
    const gateway = yield* makeGateway(gatewayConfigFrom(config, clusterKey, [devToken]))
    const server = yield* Effect.forkScoped(gateway.run)
    if (config.http !== undefined) {
      const { layerHttpSurface, READY_READ_WITHIN_MS } = yield* Effect.promise(() => import("server/http"))
      yield* Layer.build(
        layerHttpSurface(config.http, {
          status: gateway.status,
          leaseMs: config.leaseMs,
          readWithinMs: READY_READ_WITHIN_MS,
        }),
      )
      // A read token for the page, good while this runs (revoked at the end).
      const { secret, info } = yield* createOperatorToken("make dev", "read")
      yield* Effect.addFinalizer(() => store.revokeOperatorToken(String(info.tokenId)).pipe(Effect.ignore))
      const url = `http://${config.http.host.includes(":") ? `[${config.http.host}]` : config.http.host}:${config.http.port}/`
      yield* Console.log(`Dashboard: ${url}  (operator token, read: ${secret})`)
      // And one for the command line from another terminal (runs need an admin token).
      const cli = yield* createOperatorToken("make dev (command line)", "admin")
      yield* Effect.addFinalizer(() =>
        store.revokeOperatorToken(String(cli.info.tokenId)).pipe(Effect.ignore),
      )
      yield* Console.log(
        `Command line: PICUS_API_URL=${url.slice(0, -1)} PICUS_API_TOKEN=${cli.secret} ./picus run --all -- uptime\n`,
      )
    }

    // What the peers pin: the cluster key the dev server signs with.
    const pin = { clusterKey: { _tag: "Key" as const, key: clusterKey.publicKey } }
    const agent = (name: string, token: string) =>
      makeAgent({
        ...pin,
        token,
        serverIp: "127.0.0.1",
        os: detectOs(),
        state: openStateFile(join(dataDir, "peers", name), name),
        agentVersion: "dev",
        concurrency: 2,
        outputCapBytes: 64 * 1024,
        defaultTimeoutMs: 60_000,
        exitOnShutdown: true,
        registerTimeoutMs: 30_000,
        reconnectBaseMs: 1_000,
        reconnectMaxMs: 30_000,
        say: () => Effect.void, // the live view tells the story
      })
    const peers = yield* Effect.forEach(peerNames, (name) =>
      agent(name, devToken).pipe(Effect.flatMap((a) => Effect.forkScoped(a.run))),
    )
    yield* agent("peer-intruder", "picus_not-a-valid-token").pipe(
      Effect.flatMap((a) => a.run),
      Effect.forkScoped,
    )

    const signal = yield* untilSignal(server, signalled)
    yield* Console.log(`\n${signal}: shutting down`)
    yield* gateway.shutdown(env.PICUS_SHUTDOWN_REASON ?? DEFAULT_SHUTDOWN_REASON)
    yield* Fiber.joinAll(peers).pipe(Effect.timeout("5 seconds"), Effect.ignore)
    yield* Effect.sleep("100 millis") // let the feed's last events print
    yield* Fiber.interrupt(server)

    const sessions = (yield* store.sessions({ limit: 1_000 })).filter((s) => s.loginAt >= startedAt)
    const results = (yield* store.results({ limit: 100_000 })).filter((r) => r.receivedAt >= startedAt)
    yield* Console.log(summarize(sessions, results))
  }).pipe(
    Effect.scoped,
    Effect.provide(
      JobScheduler.layer({ maxInFlight: config.maxInFlight }).pipe(
        Layer.provideMerge(storeLayer),
        Layer.provideMerge(transportLayer),
        // The open mode: no Redis users (see WARNING above).
        Layer.provideMerge(PeerAccess.layerOpen),
      ),
    ),
    // Keep the live view readable: the feed tells the story, the log only errors.
    Effect.provideService(References.MinimumLogLevel, "Error"),
  )

// Listen for Ctrl+C before anything starts, so a signal during start-up still shuts down cleanly.
const program = firstSignal().pipe(Effect.flatMap(run), Effect.scoped)

Effect.runPromiseExit(program).then((exit) => {
  if (Exit.isSuccess(exit)) process.exit(0)
  const failure = Cause.squash(exit.cause)
  console.error(`error: ${failure instanceof Error ? failure.message : String(failure)}`)
  process.exit(1)
})
