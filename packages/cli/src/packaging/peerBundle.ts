/**
 * The peer as one CommonJS script, for Node's single executable applications (on Node 24 the
 * injected main script is CommonJS and may require only Node's built-in modules). Everything the
 * peer imports is inside, dynamic imports too; the Lua scripts that transport/redis.ts sends are
 * inlined as strings in place of the module that reads them from disk.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { LUA_SCRIPTS, luaScriptPath } from "@picus/core/transport/luaScripts"
import { rolldown } from "rolldown"

const repoRoot = join(import.meta.dirname, "..", "..", "..", "..")
export const peerEntry = join(repoRoot, "packages", "peer", "src", "main.ts")

/** The module that replaces transport/luaScripts.ts: the same exports, the texts inlined. */
const inlinedLuaModule = (): string => {
  const texts = Object.fromEntries(
    LUA_SCRIPTS.map((name) => [name, readFileSync(luaScriptPath(name), "utf8")]),
  )
  return [
    `export const LUA_SCRIPTS = ${JSON.stringify(LUA_SCRIPTS)}`,
    `const texts = ${JSON.stringify(texts)}`,
    `export const luaScriptPath = (name) => "(inlined)/" + name + ".lua"`,
    "export const luaScript = (name) => texts[name]",
  ].join("\n")
}

/** Bundles the peer into `outFile` (one file) and returns the file's size in bytes. */
export const bundlePeer = async (outFile: string): Promise<number> => {
  const lua = inlinedLuaModule()
  const bundle = await rolldown({
    input: peerEntry,
    platform: "node",
    logLevel: "warn",
    plugins: [
      {
        name: "inline-lua-scripts",
        load(id) {
          return id.endsWith(join("transport", "luaScripts.ts")) ? { code: lua, moduleType: "js" } : null
        },
      },
    ],
  })
  try {
    const { output } = await bundle.write({
      file: outFile,
      format: "cjs",
      codeSplitting: false,
      minify: true,
    })
    const chunk = output[0]
    return chunk.type === "chunk" ? Buffer.byteLength(chunk.code) : 0
  } finally {
    await bundle.close()
  }
}
