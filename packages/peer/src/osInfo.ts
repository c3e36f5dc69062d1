import { readFileSync } from "node:fs"
import { hostname, platform } from "node:os"

export interface OsInfo {
  readonly os: string
  readonly distro: string
  readonly hostname: string
}

/** Parses os-release(5): KEY=value lines, values optionally quoted. */
export const parseOsRelease = (text: string): Record<string, string> => {
  const fields: Record<string, string> = {}
  for (const line of text.split("\n")) {
    const match = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim())
    if (!match) continue
    fields[match[1]!] = match[2]!.replace(/^(["'])(.*)\1$/, "$2")
  }
  return fields
}

/** The os (node's platform name, e.g. "linux") and the distro (os-release ID, e.g. "debian"). */
export const detectOs = (osReleasePath = "/etc/os-release"): OsInfo => {
  let distro = "unknown"
  try {
    distro = parseOsRelease(readFileSync(osReleasePath, "utf8")).ID?.toLowerCase() || "unknown"
  } catch {
    // No os-release (not Linux, or a minimal container): the distro stays unknown.
  }
  return { os: platform(), distro, hostname: hostname() }
}
