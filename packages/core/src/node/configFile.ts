/**
 * The optional config file (`--config <file>`, env PICUS_CONFIG) of every program: YAML or JSON
 * whose keys are long flag names (`redis-url: redis://…`, `label: [role=web]`). A flag typed on
 * the command line wins, then the environment, then the file: a key is skipped when an environment
 * variable its flag's help names (`env REDIS_URL`) is set. An unknown key or a value of the wrong
 * shape is refused naming the file, the line and the key.
 */
import { readFileSync } from "node:fs"
import type { CAC, Command } from "cac"
import { Predicate, Result } from "effect"
import { configPathOf, noteSource } from "./configSources.ts"
import { parseStructured } from "./structuredFile.ts"
import { suggest } from "./suggest.ts"

export class ConfigFileError extends Error {
  override readonly name = "ConfigFileError"
}

type Option = Command["options"][number]

const longName = (option: Option): string | undefined => /--([a-z0-9][a-z0-9-]*)/i.exec(option.rawName)?.[1]
const takesValue = (option: Option): boolean => /[<[]/.test(option.rawName)
const camel = (kebab: string) => kebab.replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase())

/** The long flags of every command of `cli` (and its global ones): the keys a file may hold for it. */
export const longFlagsOf = (cli: CAC): ReadonlyArray<string> =>
  [cli.globalCommand, ...cli.commands]
    .flatMap((command) => command.options.map(longName))
    .filter((name): name is string => name !== undefined && name !== "help" && name !== "version")

/** The environment variables an option's help names: set, they win over the file. */
const envNamesOf = (option: Option): ReadonlyArray<string> =>
  option.description.match(/\b(?:PICUS_[A-Z0-9_]+|REDIS_URL|DATABASE_URL)\b/g) ?? []

/** Was the flag typed (`--name`, `--name=…`, `--no-name`)? */
const typed = (args: ReadonlyArray<string>, name: string): boolean =>
  args.some((arg) => /^--/.test(arg) && arg.replace(/^--(no-)?/, "").split("=")[0] === name)

const isScalar = (value: unknown): value is string | number =>
  Predicate.isString(value) || (Predicate.isNumber(value) && Number.isFinite(value))

/**
 * Reads the config file of `cli`'s parsed options (`--config`, else PICUS_CONFIG) into those options,
 * for the matched command. `args` are the arguments typed before `--`; `known` the keys any program
 * of the project takes. Throws ConfigFileError naming the file, line and key.
 */
export const applyConfigFile = (
  cli: CAC,
  args: ReadonlyArray<string>,
  known: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv = process.env,
): void => {
  const path = configPathOf(cli.options.config, env)
  if (path === undefined) return
  let text: string
  try {
    text = readFileSync(path, "utf8")
  } catch (error) {
    const code = (error as { code?: unknown }).code
    throw new ConfigFileError(
      `cannot read the config file ${path} (${code === "ENOENT" ? "no such file" : error instanceof Error ? error.message : String(error)}); check --config or PICUS_CONFIG`,
    )
  }
  const parsed = parseStructured(path, text)
  if (Result.isFailure(parsed)) throw new ConfigFileError(`config file ${parsed.failure.message}`)
  const { value, keyLines } = parsed.success
  if (value === null || value === undefined) return
  if (!Predicate.isObject(value) || Array.isArray(value))
    throw new ConfigFileError(
      `config file ${path}: expected keys and values (redis-url: redis://…), one per line`,
    )
  const command = cli.matchedCommand
  const options = [...cli.globalCommand.options, ...(command?.options ?? [])]
  const everyKey = new Set([...known, ...longFlagsOf(cli)])
  for (const [key, raw] of Object.entries(value)) {
    const where = `${path} line ${keyLines.get(key) ?? "?"}`
    const bad = (what: string) => new ConfigFileError(`config file ${where}: key "${key}" ${what}`)
    if (key === "config") throw bad("cannot name another config file")
    if (!everyKey.has(key)) {
      const near = suggest(key, [...everyKey])
      throw bad(
        `is not a flag of picus${near === undefined ? "" : `; did you mean "${near}"?`} (keys are long flag names)`,
      )
    }
    const option = options.find((o) => longName(o) === key)
    // A key of another command or program: this command does not take it.
    if (option === undefined) continue
    if (takesValue(option)) {
      const list = Array.isArray(raw) ? raw : [raw]
      if (list.length === 0 || !list.every(isScalar))
        throw bad(`must be text, a number or a list of them, got ${JSON.stringify(raw)}`)
    } else if (!Predicate.isBoolean(raw)) throw bad(`must be true or false, got ${JSON.stringify(raw)}`)
    if (typed(args, key) || envNamesOf(option).some((name) => (env[name] ?? "") !== "")) continue
    const values = Array.isArray(raw) ? raw.map(String) : Predicate.isBoolean(raw) ? raw : String(raw)
    cli.options[camel(key)] = Array.isArray(values) && values.length === 1 ? values[0] : values
    noteSource(`--${key}`, `${where}, key ${key}`)
  }
}
