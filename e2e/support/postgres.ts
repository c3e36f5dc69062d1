import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, existsSync, mkdtempSync, readdirSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort } from "./ports.ts"

/**
 * A PostgreSQL cluster of a test's own (initdb in a temporary folder, a free port), for tests
 * that stop and start it. The shared server on 5432 is never touched. PostgreSQL refuses to run
 * as root, so as root the cluster belongs to the `postgres` user.
 */
export interface PrivatePostgres {
  readonly url: string
  readonly stop: () => void
  readonly start: () => void
}

/** runuser lives in sbin, which a minimal PATH may lack. */
const runuser = () =>
  ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].find((p) => existsSync(p)) ?? "runuser"

const binDir = () => {
  const versions = readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a))
  return join("/usr/lib/postgresql", versions[0]!, "bin")
}

export const startPrivatePostgres = async (): Promise<PrivatePostgres> => {
  const bin = binDir()
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), "picus-pg-"))
  chmodSync(dir, 0o777)
  const data = join(dir, "data")
  const asOwner = (command: string, args: ReadonlyArray<string>) => {
    const full = join(bin, command)
    const isRoot = process.getuid?.() === 0
    const result = isRoot
      ? spawnSync(runuser(), ["-u", "postgres", "--", full, ...args], { encoding: "utf8" })
      : spawnSync(full, [...args], { encoding: "utf8" })
    if (result.status !== 0) {
      throw new Error(`${command} failed: ${result.error?.message ?? (result.stderr || result.stdout)}`)
    }
  }
  asOwner("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"])
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`
  const start = () => asOwner("pg_ctl", ["-D", data, "-o", options, "-w", "-l", join(dir, "log"), "start"])
  const stop = () => asOwner("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"])
  start()
  execFileSync(join(bin, "createdb"), ["-h", "127.0.0.1", "-p", String(port), "-U", "postgres", "picus"])
  return { url: `postgres://postgres@127.0.0.1:${port}/picus`, start, stop }
}
