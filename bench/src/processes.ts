import { type ChildProcess, spawn } from "node:child_process"
import { appendFileSync } from "node:fs"
import { join } from "node:path"
import { Redis } from "ioredis"
import pg from "pg"
import type { StatementCounts } from "server"
import { parseCountersLine } from "./counts.ts"

/** The server processes the benchmark starts, the way an operator starts them. */

const repoRoot = join(import.meta.dirname, "..", "..")
const serverScript = join(repoRoot, "packages", "server", "src", "main.ts")
// The built-in catalog has jobs for any os, which every peer gets; a run measures its own jobs only.
const emptyCatalog = join(repoRoot, "bench", "empty-catalog.json")

/** Starts `./picus server` with this environment (an empty catalog unless it names one). */
export const startServer = (id: string, env: Record<string, string>): Promise<ChildProcess> =>
  new Promise((resolve, reject) => {
    // BENCH_SERVER_NODE_ARGS: Node options for the servers only (--cpu-prof, say).
    const nodeArgs = process.env.BENCH_SERVER_NODE_ARGS?.split(" ").filter(Boolean) ?? []
    const child = spawn(process.execPath, [...nodeArgs, serverScript], {
      env: { ...process.env, PICUS_CATALOG: emptyCatalog, ...env, PICUS_SERVER_ID: id },
      stdio: ["ignore", "pipe", "pipe"],
    })
    let output = ""
    // BENCH_SERVER_LOG: a file the servers' output is appended to (with --trace-gc, say).
    const log = process.env.BENCH_SERVER_LOG
    // Read to the end: a full pipe would block the server.
    const onData = (chunk: Buffer) => {
      if (log) appendFileSync(log, chunk)
      output = (output + chunk.toString()).slice(-20_000)
      if (/serving/.test(output)) resolve(child)
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) =>
      reject(new Error(`server ${id} exited (${code}) before serving:\n${output}`)),
    )
  })

/** Asks a server for its counters (SIGUSR2) and reads the line it prints on stdout. */
export const requestCounters = (child: ChildProcess, timeoutMs = 10_000): Promise<StatementCounts> =>
  new Promise((resolve, reject) => {
    const stdout = child.stdout
    if (stdout === null) return reject(new Error("the server's stdout is not piped"))
    let pending = ""
    const onData = (chunk: Buffer) => {
      const lines = (pending + chunk.toString()).split("\n")
      pending = lines.pop() ?? ""
      for (const line of lines) {
        const counters = parseCountersLine(line)
        if (counters === undefined) continue
        done()
        return resolve(counters)
      }
    }
    const timer = setTimeout(() => {
      done()
      reject(new Error(`server ${child.pid} printed no counters within ${timeoutMs} ms`))
    }, timeoutMs)
    const done = () => {
      clearTimeout(timer)
      stdout.off("data", onData)
    }
    stdout.on("data", onData)
    child.kill("SIGUSR2")
  })

/** SIGINT (a clean shutdown), SIGKILL if that takes longer than `killAfterMs`. */
// BENCH_SERVER_STOP_MS: how long a server may take to stop (a --cpu-prof profile is written at exit).
export const stopProcess = (
  child: ChildProcess,
  killAfterMs = Number(process.env.BENCH_SERVER_STOP_MS ?? 15_000),
): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    const timer = setTimeout(() => child.kill("SIGKILL"), killAfterMs)
    child.once("exit", () => {
      clearTimeout(timer)
      resolve()
    })
    child.kill("SIGINT")
  })

/** Deletes every key and Redis user of a run's prefix: each peer leaves its inbox stream behind. */
export const deleteKeys = async (redisUrl: string, prefix: string): Promise<void> => {
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 3 })
  try {
    let cursor = "0"
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000)
      if (keys.length > 0) await redis.unlink(...keys)
      cursor = next
    } while (cursor !== "0")
    const users = ((await redis.call("ACL", "USERS")) as Array<string>).filter((u) =>
      u.startsWith(`${prefix}:`),
    )
    if (users.length > 0) await redis.call("ACL", "DELUSER", ...users)
  } finally {
    redis.disconnect()
  }
}

/** Removes what a run of the servers left: its database (ending its connections) and its keys. */
export const dropRun = async (
  env: { readonly pgAdminUrl: string; readonly redisUrl: string },
  dbName: string,
  prefix: string,
): Promise<void> => {
  const admin = new pg.Client({ connectionString: env.pgAdminUrl })
  await admin.connect()
  try {
    await admin.query(`drop database if exists ${dbName} with (force)`)
  } finally {
    await admin.end()
  }
  await deleteKeys(env.redisUrl, prefix)
}
