/**
 * What every command line of the project shares (`./picus`, `picus server`, `picus peer`): one
 * version, `--help` and `--version` on every command, an unknown command or flag refused with a
 * suggestion and exit code 2 before anything starts, and a command's outcome as its exit code.
 */
import type { CAC } from "cac"
import { configPathOf, explainSource } from "./configSources.ts"
import { suggest } from "./suggest.ts"

export { explainSource, suggest }

export const PICUS_VERSION = "0.1.0"

/** Exit codes: 0 done, 1 failed while doing it, 2 a usage mistake (nothing was done). */
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

/** A usage mistake found by hand (a bad flag value, a missing argument): exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError"
}

/** Prints `error: message` on stderr and exits with `code`. */
export const exitWith = (code: number, message?: string): never => {
  if (message !== undefined) console.error(`error: ${explainSource(message)}`)
  process.exit(code)
}

/** The flag as it was typed, for a parsed option's camelCase key. */
const rawFlag = (args: ReadonlyArray<string>, key: string): string => {
  const kebab = key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)
  return args.find((a) => a.replace(/^-+(no-)?/, "").split("=")[0] === kebab)?.split("=")[0] ?? `--${kebab}`
}

const commandNames = (cli: CAC): ReadonlyArray<string> =>
  cli.commands.filter((c) => c.name !== "").flatMap((c) => [c.name, ...c.aliasNames])

/**
 * Parses `argv` (`process.argv` shaped) with `cli` and runs the matched command. `--version` is
 * answered on every command; `--help` by cac; an unknown command, an unknown flag or a stray
 * argument exits 2 with what to type instead. `elsewhere` names commands of another program
 * (`picus sessions` when `picus server sesions` was typed), suggested too. Every command takes
 * `--config <file>` (see configFile.ts).
 */
export const runProgram = (
  cli: CAC,
  argv: ReadonlyArray<string>,
  options: {
    readonly elsewhere?: { readonly program: string; readonly commands: ReadonlyArray<string> }
    /** The programs that may share a config file with this one: their flags are known keys too. */
    readonly siblings?: ReadonlyArray<CAC>
  } = {},
): void => {
  const args = argv.slice(2)
  const beforeDashes = args.includes("--") ? args.slice(0, args.indexOf("--")) : args
  if (beforeDashes.includes("--version") || beforeDashes.includes("-v")) {
    console.log(`${cli.name} ${PICUS_VERSION}`)
    process.exit(0)
  }
  cli.option(
    "--config <file>",
    "Read flags from this YAML or JSON file, keys named as the long flags (env PICUS_CONFIG)",
  )
  cli.help()
  const names = commandNames(cli)
  const unknown = (word: string): never => {
    const near = suggest(word, names)
    const there = options.elsewhere && suggest(word, options.elsewhere.commands)
    const hint =
      near !== undefined
        ? `; did you mean "${cli.name} ${near}"?`
        : there !== undefined
          ? `; did you mean "${options.elsewhere?.program} ${there}"?`
          : ""
    return exitWith(EXIT_USAGE, `unknown command "${word}"${hint} (see ${cli.name} --help)`)
  }
  const failed = (error: unknown): never => {
    const said = error instanceof Error ? error.message : String(error)
    // cac names an unknown flag camelCased (`--bogusFlag`): name it as it was typed.
    const message = said.replace(
      /^Unknown option `-*([^`]+)`/,
      (_, key: string) => `unknown option \`${rawFlag(beforeDashes, key)}\``,
    )
    const command = cli.matchedCommandName ? `${cli.name} ${cli.matchedCommandName}` : cli.name
    return exitWith(EXIT_USAGE, `${message.replace(/`/g, '"')} (see ${command} --help)`)
  }
  try {
    cli.parse([...argv], { run: false })
    if (cli.options.help === true) process.exit(0) // cac printed it
    const command = cli.matchedCommand
    // No command matched, or the default one got a word it takes no argument for: a typo.
    if (command === undefined || (command.name === "" && command.args.length === 0 && cli.args.length > 0)) {
      if (cli.args[0] !== undefined) unknown(String(cli.args[0]))
      // cac checks flags against a matched command only: `picus --bogus` is checked here.
      const known = new Set(cli.globalCommand.options.flatMap((o) => o.names))
      const stray = Object.keys(cli.options).find((key) => key !== "--" && !known.has(key))
      if (stray !== undefined)
        exitWith(EXIT_USAGE, `unknown option "${rawFlag(beforeDashes, stray)}" (see ${cli.name} --help)`)
      cli.outputHelp()
      process.exit(0)
    }
    if (configPathOf(cli.options.config) === undefined) {
      cli.runMatchedCommand()
      return
    }
  } catch (error) {
    failed(error)
  }
  // A config file: its reader, and the YAML parser it brings, are loaded only now.
  void import("./configFile.ts").then((config) => {
    try {
      try {
        config.applyConfigFile(cli, beforeDashes, (options.siblings ?? []).flatMap(config.longFlagsOf))
      } catch (error) {
        if (error instanceof config.ConfigFileError) exitWith(EXIT_USAGE, error.message)
        throw error
      }
      cli.runMatchedCommand()
    } catch (error) {
      failed(error)
    }
  })
}
