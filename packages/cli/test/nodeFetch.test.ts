import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { arch, tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { nodeBinaryFor, PackagingError } from "../src/packaging/sea.ts"

// Fetching the other architecture's node binary for `picus package`, against a registry that fails:
// an `npm` of our own on PATH fails its first `failures` calls, then packs a package as npm does.

const other = arch() === "arm64" ? "x64" : "arm64"
let dir: string
let savedPath: string | undefined

const fakeNpm = (failures: number) => {
  const bin = join(dir, "bin")
  mkdirSync(bin, { recursive: true })
  const script = `#!/bin/sh
# npm pack --loglevel=error --prefer-offline --pack-destination DIR SPEC
echo call >> "${dir}/calls"
if [ "$(wc -l < "${dir}/calls")" -le ${failures} ]; then printf "npm error code ECONNRESET\\nnpm error network aborted\\nnpm error A complete log of this run can be found in: /x.log\\n" >&2; exit 1; fi
dest="$5"; work=$(mktemp -d); mkdir -p "$work/package/bin"; printf '#!/bin/sh\\n' > "$work/package/bin/node"
tar -czf "$dest/node.tgz" -C "$work" package; rm -rf "$work"; echo node.tgz
`
  writeFileSync(join(bin, "npm"), script)
  chmodSync(join(bin, "npm"), 0o755)
  process.env.PATH = `${bin}:${savedPath ?? ""}`
}
const calls = () =>
  existsSync(join(dir, "calls")) ? readFileSync(join(dir, "calls"), "utf8").split("\n").length - 1 : 0

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "picus-fetch-"))
  savedPath = process.env.PATH
})
afterEach(() => {
  process.env.PATH = savedPath
  rmSync(dir, { recursive: true, force: true })
})

describe("fetching another architecture's node binary", () => {
  it("tries again when the registry fails once, and then has the binary", () => {
    fakeNpm(1)
    const told: Array<string> = []
    const binary = nodeBinaryFor(other, join(dir, "cache"), { pausesMs: [0, 0], log: (l) => told.push(l) })
    expect(existsSync(binary)).toBe(true)
    expect(calls()).toBe(2)
    expect(told).toEqual([
      expect.stringMatching(
        /^npm pack node-linux-.* failed \(npm error code ECONNRESET; npm error network aborted\); trying again in 0 ms$/,
      ),
    ])
    // Kept: the next build asks nobody.
    expect(nodeBinaryFor(other, join(dir, "cache"), { pausesMs: [0, 0] })).toBe(binary)
    expect(calls()).toBe(2)
  })

  it("gives up after its tries with npm's reason and how many tries it made", () => {
    fakeNpm(99)
    expect(() => nodeBinaryFor(other, join(dir, "cache"), { pausesMs: [0, 0] })).toThrow(PackagingError)
    expect(calls()).toBe(3)
    expect(() => nodeBinaryFor(other, join(dir, "cache"), { pausesMs: [0] })).toThrow(
      new RegExp(
        `could not fetch node-linux-${other}@${process.versions.node} .*2 tries\\): npm error code ECONNRESET; npm error network aborted$`,
      ),
    )
    expect(calls()).toBe(5)
  })
})
