/**
 * The peer's Debian package, built with dpkg-deb: the executable at /usr/bin/picus-peer, a
 * systemd unit, and /etc/picus/peer.env (a conffile, mode 0600, owned by the peer's user) read as
 * the unit's EnvironmentFile. The peer's state (/var/lib/picus: its id, keys and the journal that
 * stops a ticket from running twice) is never removed by the package, not even on purge.
 *
 * The maintainer scripts honour DPKG_ROOT, so that the package also installs into another root
 * (`dpkg --root <dir> --force-script-chrootless`), as the test suite does.
 */
import { execFileSync } from "node:child_process"
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import { PICUS_VERSION } from "@picus/core"
import type { Arch } from "./sea.ts"
import { PackagingError } from "./sea.ts"

export const DEB_PACKAGE = "picus-peer"
const DEB_ARCH: Record<Arch, string> = { x64: "amd64", arm64: "arm64" }
export const STATE_DIR = "/var/lib/picus"
export const CONFIG_FILE = "/etc/picus/peer.env"
export const UNIT_PATH = "/usr/lib/systemd/system/picus-peer.service"

/** The user the service runs as: `picus` (made by postinst), or root when the operator asks. */
export type RunAs = "picus" | "root"

export const unitFile = (runAs: RunAs): string => `[Unit]
Description=picus peer: runs the jobs a picus server sends
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User=${runAs}
Group=${runAs}
# The state folder, made by systemd and owned by the user above; peer.env may move it.
StateDirectory=picus
StateDirectoryMode=0700
Environment=PICUS_STATE_DIR=${STATE_DIR}
EnvironmentFile=${CONFIG_FILE}
ExecStart=/usr/bin/picus-peer
# SIGTERM to the peer alone is its clean logout (reason peer_shutdown); the jobs it runs get the
# stop timeout to finish before the rest of the group is killed.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
# Exit code 2 is a mistake in peer.env (the error names it): restarting would not mend it.
RestartPreventExitStatus=2

[Install]
WantedBy=multi-user.target
`

const configTemplate = `# The picus peer's settings, read by picus-peer.service (mode 0600: it holds a secret).
# After a change: systemctl restart picus-peer

# The enrollment string the operator gave (./picus token create --name ... prints it).
PICUS_ENROLL=

# Where the servers' Redis is: redis://[user:password@]host:port, rediss:// for TLS.
REDIS_URL=redis://127.0.0.1:6379

# Labels to target runs by (./picus run --label role=web), comma separated.
#PICUS_LABELS=role=web,zone=a

# This peer's id (default: one made up once and kept in ${STATE_DIR}).
#PICUS_PEER_ID=

# Jobs run at once (default 4).
#PICUS_CONCURRENCY=4
`

/** Runs as /bin/sh, in the installed system or, with DPKG_ROOT set, against another root. */
const postinst = (runAs: RunAs): string => `#!/bin/sh
set -e
root="\${DPKG_ROOT:-}"
user=${runAs}
if [ "$1" = configure ]; then
  if [ "$user" != root ] && ! grep -q "^$user:" "$root/etc/passwd"; then
    if [ -n "$root" ]; then prefix="--prefix $root"; else prefix=""; fi
    # shellcheck disable=SC2086
    useradd $prefix --system --user-group --home-dir ${STATE_DIR} --no-create-home \\
      --shell /usr/sbin/nologin --comment "picus peer" "$user"
  fi
  # Numeric ids from the root's own passwd file (it may not be this system's).
  uid=$(awk -F: -v u="$user" '$1 == u { print $3 }' "$root/etc/passwd")
  gid=$(awk -F: -v u="$user" '$1 == u { print $4 }' "$root/etc/passwd")
  mkdir -p "$root${STATE_DIR}"
  chown "$uid:$gid" "$root${STATE_DIR}" "$root${CONFIG_FILE}"
  chmod 0700 "$root${STATE_DIR}"
  chmod 0600 "$root${CONFIG_FILE}"
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: the running peer logs out and starts again on the new binary.
    if [ -n "$2" ]; then systemctl try-restart ${DEB_PACKAGE}.service || true; fi
  fi
fi
`

const prerm = `#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  # A clean logout (SIGTERM) before the binary goes.
  systemctl disable --now ${DEB_PACKAGE}.service || true
fi
`

const postrm = `#!/bin/sh
set -e
if [ -z "\${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
if [ "$1" = purge ]; then
  echo "${DEB_PACKAGE}: the peer's state stays in ${STATE_DIR} (its id and the journal of its tickets); remove it to forget this peer"
fi
`

const control = (arch: Arch, installedKiB: number): string => `Package: ${DEB_PACKAGE}
Version: ${PICUS_VERSION}
Architecture: ${DEB_ARCH[arch]}
Maintainer: picus <picus@localhost>
Installed-Size: ${installedKiB}
Depends: libc6 (>= 2.28), libstdc++6, passwd
Section: admin
Priority: optional
Description: picus peer: runs the jobs a picus server sends
 One self-contained executable (Node.js inside) and a systemd unit. Configure
 ${CONFIG_FILE}, then: systemctl enable --now ${DEB_PACKAGE}
`

export interface DebOptions {
  readonly arch: Arch
  /** The packaged peer executable of that arch. */
  readonly executable: string
  readonly outDir: string
  readonly workDir: string
  readonly runAs: RunAs
  /** dpkg-deb's compressor: xz (smallest, slow) or gzip (fast). */
  readonly compression: "xz" | "gzip"
}

/** Builds `picus-peer_<version>_<debian arch>.deb` into outDir and returns its path. */
export const buildDeb = (options: DebOptions): string => {
  const { arch, runAs } = options
  mkdirSync(options.workDir, { recursive: true })
  const tree = mkdtempSync(join(options.workDir, `deb-${arch}-`))
  try {
    const put = (path: string, mode: number, content?: string, from?: string) => {
      const target = join(tree, path)
      mkdirSync(join(target, ".."), { recursive: true })
      if (from !== undefined) copyFileSync(from, target)
      else writeFileSync(target, content ?? "")
      chmodSync(target, mode)
    }
    put("usr/bin/picus-peer", 0o755, undefined, options.executable)
    put(UNIT_PATH.slice(1), 0o644, unitFile(runAs))
    put(CONFIG_FILE.slice(1), 0o600, configTemplate)
    put("DEBIAN/conffiles", 0o644, `${CONFIG_FILE}\n`)
    put("DEBIAN/postinst", 0o755, postinst(runAs))
    put("DEBIAN/prerm", 0o755, prerm)
    put("DEBIAN/postrm", 0o755, postrm)
    const du = execFileSync("du", ["-sk", "--exclude=DEBIAN", tree], { encoding: "utf8" })
    put("DEBIAN/control", 0o644, control(arch, Number.parseInt(du, 10)))
    for (const dir of [
      "",
      "DEBIAN",
      "usr",
      "usr/bin",
      "usr/lib",
      "usr/lib/systemd",
      "usr/lib/systemd/system",
      "etc",
      "etc/picus",
    ])
      chmodSync(join(tree, dir), 0o755)
    mkdirSync(options.outDir, { recursive: true })
    const deb = join(options.outDir, `${DEB_PACKAGE}_${PICUS_VERSION}_${DEB_ARCH[arch]}.deb`)
    try {
      execFileSync(
        "dpkg-deb",
        ["--root-owner-group", `-Z${options.compression}`, "-z6", "--build", tree, deb],
        { stdio: ["ignore", "ignore", "pipe"] },
      )
    } catch (cause) {
      throw new PackagingError(
        `dpkg-deb could not build the package (is dpkg installed? apt-get install dpkg): ${cause instanceof Error ? cause.message : String(cause)}`,
        { cause },
      )
    }
    return deb
  } finally {
    rmSync(tree, { recursive: true, force: true })
  }
}
