/**
 * The Lua scripts of `./lua/`, each headed by a comment naming its KEYS and ARGV. Read from beside
 * this file; a build that must stand alone (the packaged peer, see packages/cli/src/packaging)
 * replaces this module with one holding the scripts' texts, so nothing is read from disk.
 */
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

export const LUA_SCRIPTS = ["renewOwners", "releaseOwner", "inboxNotice", "intake", "intakeAge"] as const
export type LuaScriptName = (typeof LUA_SCRIPTS)[number]

/** Where a script's source is, for this module and for the build that inlines it. */
export const luaScriptPath = (name: LuaScriptName): string =>
  fileURLToPath(new URL(`./lua/${name}.lua`, import.meta.url))

export const luaScript = (name: LuaScriptName): string => readFileSync(luaScriptPath(name), "utf8")
