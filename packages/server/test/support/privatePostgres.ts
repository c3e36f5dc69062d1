import { execFileSync, spawnSync } from "node:child_process"
import { chmodSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

/**
 * A PostgreSQL of a test's own (initdb in a temporary folder, on a free port), for what the shared one
 * must not be changed for: TLS, say. PostgreSQL refuses to run as root, so it runs as `postgres`.
 */

export const postgresBin = (): string | undefined => {
  const root = "/usr/lib/postgresql"
  if (!existsSync(root)) return undefined
  const version = readdirSync(root).sort().at(-1)
  const bin = version === undefined ? undefined : join(root, version, "bin")
  return bin !== undefined && existsSync(join(bin, "initdb")) ? bin : undefined
}

export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address ? address.port : 0))
    })
  })

const asPostgres = process.getuid?.() === 0

const run = (command: string, args: ReadonlyArray<string>) =>
  asPostgres
    ? execFileSync("runuser", ["-u", "postgres", "--", command, ...args], { stdio: "pipe" })
    : execFileSync(command, args, { stdio: "pipe" })

export interface PrivatePostgres {
  readonly port: number
  readonly dir: string
  readonly stop: () => void
}

/** Starts it; `conf` lines go into postgresql.conf, `hba` replaces pg_hba.conf. */
export const startPrivatePostgres = async (options: {
  readonly conf: ReadonlyArray<string>
  readonly hba: ReadonlyArray<string>
  /** Files to put in the data folder before it starts (name -> content), readable by postgres only. */
  readonly files?: Readonly<Record<string, string>>
}): Promise<PrivatePostgres> => {
  const bin = postgresBin()
  if (bin === undefined) throw new Error("no PostgreSQL server binaries under /usr/lib/postgresql")
  const dir = mkdtempSync(join(tmpdir(), "picus-pg-"))
  const data = join(dir, "data")
  if (asPostgres) chownSync(dir, uidOf("postgres"), gidOf("postgres"))
  run(join(bin, "initdb"), ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
  const port = await freePort()
  for (const [name, content] of Object.entries(options.files ?? {})) {
    const path = join(data, name)
    writeFileSync(path, content)
    chmodSync(path, 0o600)
    if (asPostgres) chownSync(path, uidOf("postgres"), gidOf("postgres"))
  }
  writeFileSync(
    join(data, "postgresql.conf"),
    [
      `port = ${port}`,
      "listen_addresses = '127.0.0.1'",
      `unix_socket_directories = '${dir}'`,
      "fsync = off",
      ...options.conf,
      "",
    ].join("\n"),
    { flag: "a" },
  )
  writeFileSync(join(data, "pg_hba.conf"), `${options.hba.join("\n")}\n`)
  run(join(bin, "pg_ctl"), ["-D", data, "-w", "-l", join(dir, "log"), "start"])
  return {
    port,
    dir,
    stop: () => {
      spawnSync(asPostgres ? "runuser" : join(bin, "pg_ctl"), [
        ...(asPostgres ? ["-u", "postgres", "--", join(bin, "pg_ctl")] : []),
        "-D",
        data,
        "-m",
        "immediate",
        "stop",
      ])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

const idOf = (flag: "-u" | "-g", user: string): number =>
  Number(execFileSync("id", [flag, user]).toString().trim())
const uidOf = (user: string) => idOf("-u", user)
const gidOf = (user: string) => idOf("-g", user)

/** A CA and certificates signed by it, made with openssl in a temporary folder. */
export const makeCertificates = (hostNames: ReadonlyArray<string>) => {
  const dir = mkdtempSync(join(tmpdir(), "picus-certs-"))
  const ssl = (...args: Array<string>) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" })
  const ca = (name: string) => {
    ssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=${name}`,
      "-keyout",
      `${name}.key`,
      "-out",
      `${name}.crt`,
    )
  }
  ca("ca")
  ca("other-ca")
  ssl(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    `/CN=${hostNames[0]}`,
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
  )
  writeFileSync(
    join(dir, "ext.cnf"),
    `subjectAltName=${hostNames.map((h) => (/^[\d.]+$/.test(h) ? `IP:${h}` : `DNS:${h}`)).join(",")}\n`,
  )
  ssl(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
    "-out",
    "server.crt",
  )
  return {
    dir,
    ca: join(dir, "ca.crt"),
    otherCa: join(dir, "other-ca.crt"),
    cert: join(dir, "server.crt"),
    key: join(dir, "server.key"),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  }
}
