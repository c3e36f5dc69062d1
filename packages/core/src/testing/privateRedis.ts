import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

/**
 * A redis-server of a test's own, on a free port in a temporary folder, for what the shared Redis
 * must never get (TLS, an ACL file, requirepass). Nothing is persisted.
 */
export interface RedisServer {
  readonly port: number
  readonly dir: string
  readonly output: () => string
  readonly stop: () => Promise<void>
}

/** A TCP port nobody listens on right now. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0))
    })
  })

/**
 * Starts redis-server with these arguments (`port` is where it should listen: `--port`, or
 * `--tls-port` with `--port 0`) and waits until it says it is ready.
 */
export const startRedisServer = async (
  args: (port: number, dir: string) => ReadonlyArray<string>,
): Promise<RedisServer> => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "picus-redis-"))
  let output = ""
  const child: ChildProcess = spawn(
    "redis-server",
    ["--bind", "127.0.0.1", "--dir", dir, "--save", "", "--appendonly", "no", ...args(port, dir)],
    { stdio: ["ignore", "pipe", "pipe"] },
  )
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${output}`)), 10_000)
    const seen = (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes("Ready to accept connections")) {
        clearTimeout(timer)
        resolve()
      }
    }
    child.stdout?.on("data", seen)
    child.stderr?.on("data", seen)
    child.on("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`redis-server exited (${code}):\n${output}`))
    })
  })
  await ready
  return {
    port,
    dir,
    output: () => output,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.on("exit", resolve))
        child.kill("SIGKILL")
        await exited
      }
      rmSync(dir, { recursive: true, force: true })
    },
  }
}
