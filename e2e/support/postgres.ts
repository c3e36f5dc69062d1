import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs"
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

/** The newest installed PostgreSQL's binaries, if any. */
export const postgresBinDir = (): string | undefined => {
  if (!existsSync("/usr/lib/postgresql")) return undefined
  const versions = readdirSync("/usr/lib/postgresql").sort((a, b) => Number(b) - Number(a))
  const bin = versions[0] === undefined ? undefined : join("/usr/lib/postgresql", versions[0], "bin")
  return bin !== undefined && existsSync(join(bin, "initdb")) ? bin : undefined
}

export interface PrivatePostgresOptions {
  /** `name = value` settings for postgresql.conf. */
  readonly settings?: ReadonlyArray<string>
  /** Replaces pg_hba.conf. */
  readonly hba?: ReadonlyArray<string>
  /** Files put into the data folder (name -> content), readable by the owner only (keys, say). */
  readonly files?: Readonly<Record<string, string>>
}

export const startPrivatePostgres = async (
  options: PrivatePostgresOptions = {},
): Promise<PrivatePostgres> => {
  const bin = postgresBinDir()
  if (bin === undefined) throw new Error("no PostgreSQL server binaries under /usr/lib/postgresql")
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
  const owner = process.getuid?.() === 0 ? idsOf("postgres") : undefined
  for (const [name, content] of Object.entries(options.files ?? {})) {
    const path = join(data, name)
    writeFileSync(path, content, { mode: 0o600 })
    if (owner) chownSync(path, owner.uid, owner.gid)
  }
  if (options.settings) {
    writeFileSync(join(data, "postgresql.conf"), `${options.settings.join("\n")}\n`, { flag: "a" })
  }
  if (options.hba) writeFileSync(join(data, "pg_hba.conf"), `${options.hba.join("\n")}\n`)
  const flags = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`
  const start = () => asOwner("pg_ctl", ["-D", data, "-o", flags, "-w", "-l", join(dir, "log"), "start"])
  const stop = () => asOwner("pg_ctl", ["-D", data, "-m", "immediate", "-w", "stop"])
  start()
  execFileSync(join(bin, "createdb"), ["-h", dir, "-p", String(port), "-U", "postgres", "picus"])
  return { url: `postgres://postgres@127.0.0.1:${port}/picus`, start, stop }
}

const idsOf = (user: string) => ({
  uid: Number(execFileSync("id", ["-u", user]).toString().trim()),
  gid: Number(execFileSync("id", ["-g", user]).toString().trim()),
})
