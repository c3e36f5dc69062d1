import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { detectOs, parseOsRelease } from "../src/osInfo.ts"

describe("os detection", () => {
  it("reads ID from os-release, quoted or not", () => {
    expect(parseOsRelease('NAME="CentOS Linux"\nID="centos"\nVERSION_ID=7\n').ID).toBe("centos")
    expect(parseOsRelease("ID=debian\n# comment\n").ID).toBe("debian")
  })

  it("says unknown when there is no os-release", () => {
    expect(detectOs("/no/such/file").distro).toBe("unknown")
  })

  it("lower-cases the distro", () => {
    const path = join(mkdtempSync(join(tmpdir(), "picus-os-")), "os-release")
    writeFileSync(path, "ID=Ubuntu\n")
    expect(detectOs(path).distro).toBe("ubuntu")
  })
})
