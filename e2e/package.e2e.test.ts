import { execFileSync } from "node:child_process"
import {
  chmodSync,
  cpSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs"
import { arch, tmpdir } from "node:os"
import { join } from "node:path"
import { sql } from "slonik"
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { eventually, killAll, runPicus, startPicus, startProcess } from "./support/processes.ts"

// The packaged peer (`./picus package`): one executable made with Node's single executable
// applications, run as on a machine without Node, npm or the repository (an empty PATH, another
// folder, none of this process's environment), against a real server.

const hostArch = arch() === "arm64" ? "arm64" : "x64"
let out: string
beforeAll(async () => {
  out = mkdtempSync(join(tmpdir(), "picus-package-"))
  // Both architectures: arm64's node binary comes from the npm registry (it only builds here).
  // gzip: xz takes a minute for two 120 MiB executables on a small machine.
  const built = await runPicus(["package", "--deb", "--compression", "gzip", "--out", out], {})
  expect(built.code, built.output).toBe(0)
}, 300_000)
afterAll(() => rmSync(out, { recursive: true, force: true }))

let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "2000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const createToken = async () => {
  const created = await runPicus(["token", "create", "--name", "packaged", "--json"], world.env)
  expect(created.code, created.output).toBe(0)
  return (JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!) as { token: string }).token
}

const startServer = async () => {
  const server = startPicus("server", ["server"], {
    ...world.env,
    PICUS_CATALOG: writeCatalog(world.dir, []),
  })
  await server.waitForLine(/serving/)
  return server
}

/** The env a machine without Node gives the peer: nothing on PATH, a home of its own. */
const bareEnv = (home: string, extra: Record<string, string>): Record<string, string> => ({
  PATH: "",
  HOME: home,
  REDIS_URL: world.env.REDIS_URL!,
  PICUS_REDIS_PREFIX: world.prefix,
  PICUS_CLUSTER_PUBLIC_KEY: world.clusterPublicKey,
  ...extra,
})

describe("picus package", () => {
  it("builds one ELF executable per architecture", () => {
    // The ELF header: the magic, then e_machine at byte 18 (62 x86-64, 183 AArch64).
    for (const [a, machine] of [
      ["x64", 62],
      ["arm64", 183],
    ] as const) {
      const file = join(out, `picus-peer-linux-${a}`)
      const header = readFileSync(file).subarray(0, 20)
      expect(header.subarray(0, 4).toString("latin1")).toBe("\x7fELF")
      expect(header.readUInt16LE(18)).toBe(machine)
      expect(statSync(file).mode & 0o111).toBe(0o111)
    }
  })

  it("the executable runs with an empty PATH outside the repository: registers, runs a job, logs out on SIGTERM", async () => {
    const token = await createToken()
    await startServer()
    const home = join(world.dir, "machine")
    mkdirSync(home)
    const started = Date.now()
    const peer = startProcess(
      "packaged peer",
      join(out, `picus-peer-linux-${hostArch}`),
      ["--peer-id", "packaged-1"],
      bareEnv(home, { PICUS_TOKEN: token, PICUS_STATE_DIR: join(home, "state") }),
      { cwd: home },
    )
    await peer.waitForLine(/registered as packaged-1/)
    // A start that takes a second or more would show here, with the whole registration.
    expect(Date.now() - started).toBeLessThan(10_000)
    const ran = await runPicus(["run", "--all", "--json", "--", "echo hello from $HOME"], world.env)
    expect(ran.code, ran.output).toBe(0)
    const ticket = JSON.parse(ran.stdout.split("\n")[0]!) as {
      state: string
      output: string
      peer_id: string
    }
    expect(ticket).toMatchObject({ state: "succeeded", peer_id: "packaged-1" })
    expect(ticket.output).toContain(`hello from ${home}`)

    peer.signalGroup("SIGTERM")
    expect(await peer.exited).toBe(0)
    const logouts = await eventually("the logout", async () => {
      const rows = await world.query<{ reason: string }>(
        sql.unsafe`select reason from registration_log where event = 'logout' and peer_id = 'packaged-1'`,
      )
      return rows.length > 0 ? rows : undefined
    })
    expect(logouts.map((r) => r.reason)).toEqual(["peer_shutdown"])
  }, 60_000)
})

const debOf = (a: "amd64" | "arm64") => join(out, `picus-peer_0.1.0_${a}.deb`)
const hostDebArch = hostArch === "arm64" ? "arm64" : "amd64"
/** dpkg and its maintainer scripts need the system's sbin folders (ldconfig, useradd), as root's PATH has. */
const withSbin = {
  ...process.env,
  PATH: [process.env.PATH ?? "/usr/bin:/bin", "/usr/local/sbin", "/usr/sbin", "/sbin"].join(":"),
}
const sh = (command: string, args: ReadonlyArray<string>) =>
  execFileSync(command, [...args], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: withSbin })

/** An empty system to install into: dpkg's admin folder and a passwd with root alone. */
const emptyRoot = (): string => {
  const root = mkdtempSync(join(tmpdir(), "picus-root-"))
  // As a real / is: the peer's user must reach its files.
  chmodSync(root, 0o755)
  for (const dir of ["etc", "var/lib/dpkg/updates", "var/lib/dpkg/info", "var/log"])
    mkdirSync(join(root, dir), { recursive: true })
  writeFileSync(join(root, "var/lib/dpkg/status"), "")
  writeFileSync(join(root, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
  writeFileSync(join(root, "etc/group"), "root:x:0:\n")
  writeFileSync(join(root, "etc/shadow"), "root:*:19000:0:99999:7:::\n", { mode: 0o600 })
  writeFileSync(join(root, "etc/gshadow"), "root:*::\n", { mode: 0o600 })
  return root
}

/**
 * dpkg into another root: the maintainer scripts run here, told the root by DPKG_ROOT; the root
 * has no libc6 package (only its files matter here), so dependencies are not checked.
 */
const dpkg = (root: string, ...args: ReadonlyArray<string>) =>
  sh("dpkg", [
    `--root=${root}`,
    `--admindir=${root}/var/lib/dpkg`,
    `--log=${root}/var/log/dpkg.log`,
    "--force-script-chrootless",
    "--force-depends",
    ...args,
  ])

const userOf = (root: string, name: string) => {
  const line = readFileSync(join(root, "etc/passwd"), "utf8")
    .split("\n")
    .find((l) => l.startsWith(`${name}:`))
  if (line === undefined) return undefined
  const [, , uid, gid, , home, shell] = line.split(":")
  return { uid: Number(uid), gid: Number(gid), home, shell }
}

/** KEY=value lines of an env file (EnvironmentFile= of systemd), comments and blanks skipped. */
const envFile = (text: string): Record<string, string> =>
  Object.fromEntries(
    text
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#"))
      .map((l) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  )

describe("the Debian package", () => {
  it("holds the executable, the unit and the config with their modes, for both architectures", () => {
    for (const a of ["amd64", "arm64"] as const) {
      expect(sh("dpkg-deb", ["-f", debOf(a), "Package", "Architecture"])).toBe(
        `Package: picus-peer\nArchitecture: ${a}\n`,
      )
      const files = sh("dpkg-deb", ["-c", debOf(a)])
        .split("\n")
        .filter((l) => l !== "")
        .map((l) => {
          const [mode, owner, , , , path] = l.split(/\s+/)
          return [path, `${mode} ${owner}`]
        })
      expect(Object.fromEntries(files)).toMatchObject({
        "./usr/bin/picus-peer": "-rwxr-xr-x root/root",
        "./usr/lib/systemd/system/picus-peer.service": "-rw-r--r-- root/root",
        "./etc/picus/peer.env": "-rw------- root/root",
      })
      expect(sh("dpkg-deb", ["-I", debOf(a), "conffiles"])).toBe("/etc/picus/peer.env\n")
    }
    const unit = readUnit()
    for (const line of [
      "After=network-online.target",
      "Wants=network-online.target",
      "User=picus",
      "StateDirectory=picus",
      "EnvironmentFile=/etc/picus/peer.env",
      "ExecStart=/usr/bin/picus-peer",
      "Restart=on-failure",
      "KillSignal=SIGTERM",
    ])
      expect(unit.split("\n")).toContain(line)
  })

  it("installs into an empty root, runs as its user against the servers, upgrades and removes keeping the state", async () => {
    const root = emptyRoot()
    try {
      dpkg(root, "-i", debOf(hostDebArch))
      const user = userOf(root, "picus")
      expect(user).toMatchObject({ home: "/var/lib/picus", shell: "/usr/sbin/nologin" })
      const stateDir = join(root, "var/lib/picus")
      const config = join(root, "etc/picus/peer.env")
      const mode = (path: string) => {
        const st = statSync(path)
        return { mode: (st.mode & 0o7777).toString(8), uid: st.uid, gid: st.gid }
      }
      expect(mode(stateDir)).toEqual({ mode: "700", uid: user!.uid, gid: user!.gid })
      expect(mode(config)).toEqual({ mode: "600", uid: user!.uid, gid: user!.gid })
      expect(mode(join(root, "usr/bin/picus-peer")).mode).toBe("755")
      verifyUnit(root)

      // The operator's edit of peer.env: the enrollment string and where Redis is.
      const created = await runPicus(["token", "create", "--name", "deb", "--json"], world.env)
      expect(created.code, created.output).toBe(0)
      const { enrollment } = JSON.parse(created.stdout.split("\n").find((l) => l.startsWith("{"))!) as {
        enrollment: string
      }
      const edited = readFileSync(config, "utf8")
        .replace(/^PICUS_ENROLL=.*$/m, `PICUS_ENROLL=${enrollment}`)
        .replace(/^REDIS_URL=.*$/m, `REDIS_URL=${world.env.REDIS_URL}`)
        .concat(`PICUS_REDIS_PREFIX=${world.prefix}\nPICUS_PEER_ID=deb-1\nPICUS_LABELS=role=deb\n`)
      writeFileSync(config, edited)
      await startServer()

      // As systemd starts it: the unit's Environment=, then the EnvironmentFile, as its user;
      // the state folder is the one in this root.
      const unitEnv = { PICUS_STATE_DIR: stateDir }
      const runInstalled = () =>
        startProcess(
          "installed peer",
          join(root, "usr/bin/picus-peer"),
          [],
          { PATH: "/usr/bin:/bin", ...unitEnv, ...envFile(readFileSync(config, "utf8")) },
          { cwd: "/", uid: user!.uid, gid: user!.gid },
        )
      const peer = runInstalled()
      await peer.waitForLine(/registered as deb-1/)
      const ran = await runPicus(["run", "--label", "role=deb", "--json", "--", "id -u"], world.env)
      expect(ran.code, ran.output).toBe(0)
      const ticket = JSON.parse(ran.stdout.split("\n")[0]!) as { state: string; output: string }
      expect(ticket).toMatchObject({ state: "succeeded" })
      expect(ticket.output.trim()).toBe(String(user!.uid))
      peer.signalGroup("SIGTERM")
      expect(await peer.exited).toBe(0)
      const stateFiles = readdirSync(stateDir).sort()
      expect(stateFiles.length).toBeGreaterThan(0)

      // Upgrade (the same package again): the state and the operator's config stay.
      dpkg(root, "-i", debOf(hostDebArch))
      expect(readdirSync(stateDir).sort()).toEqual(stateFiles)
      expect(readFileSync(config, "utf8")).toBe(edited)
      expect(mode(config)).toEqual({ mode: "600", uid: user!.uid, gid: user!.gid })
      // The same peer comes back on the upgraded binary with its kept id.
      const again = runInstalled()
      await again.waitForLine(/registered as deb-1/)
      again.signalGroup("SIGTERM")
      expect(await again.exited).toBe(0)

      // Remove: the binary and the unit go; the state and the config stay. Purge: the config goes.
      dpkg(root, "-r", "picus-peer")
      expect(existsSync(join(root, "usr/bin/picus-peer"))).toBe(false)
      expect(existsSync(join(root, "usr/lib/systemd/system/picus-peer.service"))).toBe(false)
      expect(readFileSync(config, "utf8")).toBe(edited)
      dpkg(root, "--purge", "picus-peer")
      expect(existsSync(config)).toBe(false)
      expect(readdirSync(stateDir).sort()).toEqual(stateFiles)

      const logouts = await world.query<{ reason: string }>(
        sql.unsafe`select reason from registration_log where event = 'logout' and peer_id = 'deb-1' order by id`,
      )
      expect(logouts.map((r) => r.reason)).toEqual(["peer_shutdown", "peer_shutdown"])
    } finally {
      rmSync(root, { recursive: true, force: true })
    }
  }, 120_000)
})

/** The unit file as packaged, read from the host architecture's package. */
const readUnit = (): string =>
  execFileSync(
    "sh",
    [
      "-c",
      `dpkg-deb --fsys-tarfile "$1" | tar -xO ./usr/lib/systemd/system/picus-peer.service`,
      "-",
      debOf(hostDebArch),
    ],
    { encoding: "utf8", env: withSbin },
  )

/**
 * `systemd-analyze verify` of the installed unit, in a root of its own: this machine's units (for
 * the targets it names) beside the installed unit and binary.
 */
const verifyUnit = (installed: string) => {
  try {
    sh("systemd-analyze", ["--version"])
  } catch {
    console.warn("systemd-analyze is not installed: the unit is not verified (apt-get install systemd)")
    return
  }
  const root = mkdtempSync(join(tmpdir(), "picus-verify-"))
  try {
    const units = join(root, "usr/lib/systemd/system")
    mkdirSync(units, { recursive: true })
    if (existsSync("/usr/lib/systemd/system")) cpSync("/usr/lib/systemd/system", units, { recursive: true })
    cpSync(join(installed, "usr/lib/systemd/system/picus-peer.service"), join(units, "picus-peer.service"))
    mkdirSync(join(root, "usr/bin"), { recursive: true })
    linkSync(join(installed, "usr/bin/picus-peer"), join(root, "usr/bin/picus-peer"))
    // Warnings (an unknown key, a bad value) go to stderr with exit code 0: both must be clean.
    const result = execFileSync(
      "sh",
      ["-c", 'systemd-analyze verify --root="$1" picus-peer.service 2>&1', "-", root],
      { encoding: "utf8", env: withSbin },
    )
    expect(result).toBe("")
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
}
