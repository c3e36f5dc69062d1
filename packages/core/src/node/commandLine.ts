/**
 * What every command line of the project shares (`./picus`, `picus server`, `picus peer`): one
 * version, `--help` and `--version` on every command, an unknown command or flag refused with a
 * suggestion and exit code 2 before anything starts, and a command's outcome as its exit code.
 */
import type { CAC } from "cac"
import { Cause, Effect, Exit } from "effect"

export const PICUS_VERSION = "0.1.0"

/** Exit codes: 0 done, 1 failed while doing it, 2 a usage mistake (nothing was done). */
export const EXIT_FAILED = 1
export const EXIT_USAGE = 2

/** A usage mistake found by hand (a bad flag value, a missing argument): exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError"
}

/** Levenshtein distance, for "did you mean". */
const distance = (a: string, b: string): number => {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length]!
}

/** The closest of `candidates` to a mistyped `word`, when one is close enough to be meant. */
export const suggest = (word: string, candidates: ReadonlyArray<string>): string | undefined => {
  let best: { readonly name: string; readonly d: number } | undefined
  for (const name of candidates) {
    const d = name.startsWith(word) && word.length >= 2 ? 1 : distance(word, name)
    if (d <= Math.max(1, Math.floor(name.length / 3)) && (best === undefined || d < best.d))
      best = { name, d }
  }
  return best?.name
}

/** Prints `error: message` on stderr and exits with `code`. */
export const exitWith = (code: number, message?: string): never => {
  if (message !== undefined) console.error(`error: ${message}`)
  process.exit(code)
}

/**
 * Runs a command's effect and exits with its outcome: the number it succeeds with (0 when none),
 * 2 for a usage mistake (`isUsage`), 1 for any other failure. Failures are printed, not thrown.
 */
export const runCommand = (
  effect: Effect.Effect<unknown, unknown>,
  isUsage: (failure: unknown) => boolean = (failure) => failure instanceof UsageError,
): void => {
  Effect.runPromiseExit(effect).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(typeof exit.value === "number" ? exit.value : 0)
    const failure = Cause.squash(exit.cause)
    console.error(`error: ${failure instanceof Error ? failure.message : String(failure)}`)
    process.exit(isUsage(failure) ? EXIT_USAGE : EXIT_FAILED)
  })
}

const commandNames = (cli: CAC): ReadonlyArray<string> =>
  cli.commands.filter((c) => c.name !== "").flatMap((c) => [c.name, ...c.aliasNames])

/**
 * Parses `argv` (`process.argv` shaped) with `cli` and runs the matched command. `--version` is
 * answered on every command; `--help` by cac; an unknown command, an unknown flag or a stray
 * argument exits 2 with what to type instead. `elsewhere` names commands of another program
 * (`picus sessions` when `picus server sesions` was typed), suggested too.
 */
export const runProgram = (
  cli: CAC,
  argv: ReadonlyArray<string>,
  options: {
    readonly elsewhere?: { readonly program: string; readonly commands: ReadonlyArray<string> }
  } = {},
): void => {
  const args = argv.slice(2)
  const beforeDashes = args.includes("--") ? args.slice(0, args.indexOf("--")) : args
  if (beforeDashes.includes("--version") || beforeDashes.includes("-v")) {
    console.log(`${cli.name} ${PICUS_VERSION}`)
    process.exit(0)
  }
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
  try {
    cli.parse([...argv], { run: false })
    if (cli.options.help === true) process.exit(0) // cac printed it
    const command = cli.matchedCommand
    // No command matched, or the default one got a word it takes no argument for: a typo.
    if (command === undefined || (command.name === "" && command.args.length === 0 && cli.args.length > 0)) {
      if (cli.args[0] !== undefined) unknown(String(cli.args[0]))
      cli.outputHelp()
      process.exit(0)
    }
    cli.runMatchedCommand()
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    const command = cli.matchedCommandName ? `${cli.name} ${cli.matchedCommandName}` : cli.name
    exitWith(EXIT_USAGE, `${message.replace(/`/g, '"')} (see ${command} --help)`)
  }
}
