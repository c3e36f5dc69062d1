// Bundles `./picus` (packages/cli/src/main.ts and everything it imports) into a few files under
// the given folder, for a fast start: node then loads a handful of modules instead of some 800.
// The bundle runs in place, in this checkout: each module's import.meta.url is its source file's,
// so what a module reads beside itself (Lua scripts, migrations, the default catalog, PGlite's
// wasm) is found where it is. Usage: node scripts/bundle-cli.ts <out dir>
import { join } from "node:path"
import { pathToFileURL } from "node:url"
import { rolldown } from "rolldown"

const out = process.argv[2]
if (out === undefined) {
  console.error("usage: node scripts/bundle-cli.ts <out dir>")
  process.exit(2)
}
const root = join(import.meta.dirname, "..")
const bundle = await rolldown({
  input: join(root, "packages", "cli", "src", "main.ts"),
  platform: "node",
  logLevel: "silent",
  // Build tools of `picus package`, loaded from node_modules when that command runs.
  external: ["rolldown", "postject"],
  plugins: [
    {
      name: "source-import-meta-url",
      transform(code, id) {
        if (!code.includes("import.meta.url")) return null
        return { code: code.replaceAll("import.meta.url", JSON.stringify(pathToFileURL(id).href)) }
      },
    },
  ],
})
await bundle.write({
  dir: out,
  format: "esm",
  entryFileNames: "picus.mjs",
  chunkFileNames: "[name]-[hash].mjs",
})
await bundle.close()
