import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import { freePort } from "./ports.ts"

/**
 * A Redis of a test's own, on a free port with a temporary folder, for tests that stop and
 * restart it. The shared Redis on 6379 is never touched.
 */
export interface PrivateRedis {
  readonly url: string
  readonly stop: () => Promise<void>
  readonly start: () => Promise<void>
}

const answers = async (url: string) => {
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  client.on("error", () => {})
  try {
    await client.connect()
    return (await client.ping()) === "PONG"
  } catch {
    return false
  } finally {
    client.disconnect()
  }
}

export const startPrivateRedis = async (options: {
  readonly persistent: boolean
  /**
   * The ACL file's lines (`user default off`, say): Redis with logins everywhere. `url` then logs in
   * as `admin`, which the lines must define (with password `admin`).
   */
  readonly acl?: ReadonlyArray<string>
}): Promise<PrivateRedis> => {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "picus-redis-"))
  const url = options.acl ? `redis://admin:admin@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`
  const acl = options.acl ? ["--aclfile", join(dir, "users.acl")] : []
  if (options.acl) writeFileSync(join(dir, "users.acl"), `${options.acl.join("\n")}\n`)
  let child: ChildProcess | undefined
  const persistence = options.persistent
    ? ["--appendonly", "yes", "--appendfsync", "always"]
    : ["--appendonly", "no", "--save", ""]
  const start = async () => {
    child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--dir", dir, ...persistence, ...acl],
      {
        stdio: "ignore",
      },
    )
    for (let i = 0; i < 100 && !(await answers(url)); i++) await new Promise((r) => setTimeout(r, 50))
  }
  const stop = async () => {
    const running = child
    if (!running || running.exitCode !== null) return
    const exited = new Promise((resolve) => running.on("exit", resolve))
    running.kill("SIGKILL")
    await exited
  }
  await start()
  return { url, start, stop }
}
