import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { PGlite } from "@electric-sql/pglite"
import { PGLiteSocketServer } from "@electric-sql/pglite-socket"
import { Effect, type Scope } from "effect"
import type { Interceptor } from "slonik"
import { PoolError, type PoolOptions } from "./pool.ts"

/**
 * The embedded PostgreSQL of `make dev`: PGlite (PostgreSQL in WebAssembly) with its data in a
 * folder, served on a loopback port by its socket server so that the ordinary slonik Store talks
 * to it exactly as to a real PostgreSQL.
 *
 * PGlite is one backend: the pool over it must have one connection (see EMBEDDED_POOL_SIZE). It
 * does not lock its folder, so the process that opens it records its port in `embedded.json`;
 * another process (e.g. `./picus sessions --embedded`) connects to that port while the owner
 * lives, and opens the folder itself only when nobody does.
 */

export const defaultDataDir: string = fileURLToPath(new URL("../../../../.data", import.meta.url))
export const EMBEDDED_POOL_SIZE = 1

/**
 * Queries sent unnamed. PGlite serves every connection from its one backend, so a statement one
 * connection prepares exists for all of them, and outlives the connection: the next connection
 * that prepares the same name (a pool's fresh one after an idle one closed, another process's)
 * fails with "prepared statement ... already exists", and the results it carried are lost.
 */
const unnamedStatements: Interceptor = {
  name: "embedded-unnamed-statements",
  transformQuery: (_context, query) => ({ sql: query.sql, values: query.values }),
}

/** The pool over the embedded database: one connection, no named prepared statements. */
export const EMBEDDED_POOL_OPTIONS: PoolOptions = {
  maxPoolSize: EMBEDDED_POOL_SIZE,
  interceptors: [unnamedStatements],
}

const lockFile = (dataDir: string) => join(dataDir, "embedded.json")
const urlFor = (port: number) => `postgres://postgres@127.0.0.1:${port}/postgres`

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The port of a live process that serves this folder already, if any. */
const runningServer = (dataDir: string): number | undefined => {
  try {
    const { pid, port } = JSON.parse(readFileSync(lockFile(dataDir), "utf8")) as { pid: number; port: number }
    return pid !== process.pid && isAlive(pid) ? port : undefined
  } catch {
    return undefined
  }
}

const fail = (message: string) => (cause: unknown) =>
  new PoolError({ message: `${message}: ${cause instanceof Error ? cause.message : String(cause)}` })

/** Opens the folder with PGlite and serves it on a free loopback port, until the scope closes. */
export const serveEmbedded = (dataDir: string): Effect.Effect<string, PoolError, Scope.Scope> =>
  Effect.gen(function* () {
    const pgDir = join(dataDir, "pglite")
    mkdirSync(pgDir, { recursive: true })
    const db = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => PGlite.create(pgDir),
        catch: fail(`cannot open the embedded database in ${pgDir}`),
      }),
      (db) => Effect.promise(() => db.close()).pipe(Effect.ignore),
    )
    const server = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const server = new PGLiteSocketServer({ db, host: "127.0.0.1", port: 0, maxConnections: 8 })
          await server.start()
          return server
        },
        catch: fail("cannot serve the embedded database"),
      }),
      (server) => Effect.promise(() => server.stop()).pipe(Effect.ignore),
    )
    const address = server.getServerConn()
    const port = Number(address.split(":").at(-1))
    yield* Effect.acquireRelease(
      Effect.sync(() => writeFileSync(lockFile(dataDir), JSON.stringify({ pid: process.pid, port }))),
      () => Effect.sync(() => rmSync(lockFile(dataDir), { force: true })),
    )
    return urlFor(port)
  })

/** A URL for the embedded database in the folder: the running owner's, or one served here. */
export const connectEmbedded = (dataDir: string): Effect.Effect<string, PoolError, Scope.Scope> =>
  Effect.suspend(() => {
    const port = runningServer(dataDir)
    if (port !== undefined) return Effect.succeed(urlFor(port))
    if (!existsSync(join(dataDir, "pglite"))) {
      return Effect.fail(
        new PoolError({ message: `no embedded database in ${dataDir} (run make dev first)` }),
      )
    }
    return serveEmbedded(dataDir)
  })
