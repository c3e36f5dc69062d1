/**
 * The peer as one CommonJS script, for Node's single executable applications (on Node 24 the
 * injected main script is CommonJS and may require only Node's built-in modules). Everything the
 * peer imports is inside, dynamic imports too; the Lua scripts that transport/redis.ts sends are
 * inlined as strings in place of the module that reads them from disk, and the Node built-ins
 * that libraries load at start but an idle peer never uses are loaded at their first use.
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

/**
 * Built-ins required at load time by the bundled libraries and used only in rare paths: ioredis's
 * `tls` (only for rediss:// URLs, about 3.5 MiB resident once loaded) and redis-errors' `assert`
 * (only to build a parser error, about 1 MiB). Each is required from CommonJS and only called or
 * read a member of, so a stand-in that loads the module at its first use behaves the same.
 */
export const LAZY_BUILTINS: ReadonlyArray<string> = ["tls", "assert"]
const LAZY_PREFIX = "\0lazy-builtin:"

/** The stand-in for built-in `name`: a callable whose every member and call loads the module. */
export const lazyBuiltinModule = (name: string): string =>
  [
    "let loaded",
    `const load = () => (loaded ??= process.getBuiltinModule(${JSON.stringify(`node:${name}`)}))`,
    "module.exports = new Proxy(function () {}, {",
    "  get: (_, key) => load()[key],",
    "  apply: (_, self, args) => Reflect.apply(load(), self, args),",
    "})",
  ].join("\n")

/** Bundles the peer into `outFile` (one file) and returns the file's size in bytes. */
export const bundlePeer = async (outFile: string): Promise<number> => {
  const lua = inlinedLuaModule()
  const bundle = await rolldown({
    input: peerEntry,
    platform: "node",
    logLevel: "warn",
    plugins: [
      {
        name: "lazy-builtins",
        resolveId(source, importer) {
          const name = source.replace(/^node:/, "")
          // Only the libraries' requires: the peer's own imports of these stay as they are.
          if (!LAZY_BUILTINS.includes(name) || importer === undefined || !importer.includes("node_modules"))
            return null
          return { id: `${LAZY_PREFIX}${name}`, moduleSideEffects: false }
        },
        load(id) {
          return id.startsWith(LAZY_PREFIX)
            ? { code: lazyBuiltinModule(id.slice(LAZY_PREFIX.length)), moduleType: "js" }
            : null
        },
      },
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
      // One byte per character: V8 keeps a script with any non-ASCII character as two bytes per
      // character, and the packaged peer holds its source in memory (1.1 MiB instead of 0.55).
      charset: "ascii",
    })
    const chunk = output[0]
    return chunk.type === "chunk" ? Buffer.byteLength(chunk.code) : 0
  } finally {
    await bundle.close()
  }
}
