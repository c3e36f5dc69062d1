import { execFileSync, spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { bundlePeer, LAZY_BUILTINS, lazyBuiltinModule } from "../src/packaging/peerBundle.ts"

// The bundle the packaged peer runs: what it keeps out of an idle peer's memory.

let dir: string
let file: string
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "picus-bundle-"))
  file = join(dir, "peer.cjs")
  await bundlePeer(file)
}, 120_000)
afterAll(() => rmSync(dir, { recursive: true, force: true }))

/** Runs the bundle with node and `args`; the built-ins it had loaded by its exit, of `names`. */
const loadedBy = (args: ReadonlyArray<string>, names: ReadonlyArray<string>): Array<string> => {
  const probe = join(dir, "probe.cjs")
  writeFileSync(
    probe,
    `process.on("exit", () => process.stderr.write("LOADED " + JSON.stringify(${JSON.stringify(names)}.filter((m) => process.moduleLoadList.includes("NativeModule " + m)))))`,
  )
  const run = spawnSync(process.execPath, ["--require", probe, file, ...args], { encoding: "utf8" })
  return JSON.parse(/LOADED (.*)$/m.exec(run.stderr)?.[1] ?? "null")
}

describe("the peer's bundle", () => {
  it("is ASCII: V8 keeps such a script in one byte per character", () => {
    const code = readFileSync(file, "utf8")
    expect(code.length).toBeGreaterThan(100_000)
    expect([...code].findIndex((c) => c.charCodeAt(0) > 0x7f)).toBe(-1)
  })

  it("loads tls, assert and child_process only when used, not at start", () => {
    const code = readFileSync(file, "utf8")
    for (const name of LAZY_BUILTINS) expect(code).not.toMatch(new RegExp(`require\\("(node:)?${name}"\\)`))
    expect(loadedBy(["--version"], [...LAZY_BUILTINS, "child_process", "crypto"])).toEqual(["crypto"])
  })

  it("its stand-ins load the module at first use and behave as it does", () => {
    for (const name of LAZY_BUILTINS) writeFileSync(join(dir, `${name}.cjs`), lazyBuiltinModule(name))
    const script = join(dir, "standIns.cjs")
    writeFileSync(
      script,
      [
        'const loaded = (m) => process.moduleLoadList.includes("NativeModule " + m)',
        'const tls = require("./tls.cjs"), assert = require("./assert.cjs")',
        'const before = [loaded("tls"), loaded("assert")]',
        'let threw = false; try { assert(false, "no") } catch (e) { threw = e.code === "ERR_ASSERTION" }',
        "const connect = typeof tls.connect",
        'process.stdout.write(JSON.stringify({ before, threw, connect, after: [loaded("tls"), loaded("assert")] }))',
      ].join("\n"),
    )
    const out = JSON.parse(execFileSync(process.execPath, [script], { encoding: "utf8", cwd: dir }))
    expect(out).toEqual({ before: [false, false], threw: true, connect: "function", after: [true, true] })
  })
})
