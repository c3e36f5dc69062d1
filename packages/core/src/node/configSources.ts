/**
 * Where each flag read from a config file was set, for the messages of the command that reads it.
 * Apart from configFile.ts so that every command can explain its errors without loading the
 * config file's parser.
 */
const sources = new Map<string, string>()

/** The config file asked for: `--config` as parsed (`cli.options.config`), else PICUS_CONFIG. */
export const configPathOf = (given: unknown, env: NodeJS.ProcessEnv = process.env): string | undefined => {
  const path = given !== undefined && given !== "" ? String(given) : env.PICUS_CONFIG
  return path === undefined || path === "" ? undefined : path
}

/** `flag` (`--redis-url`) was set at `where` (`picus.yaml:3, key redis-url`). */
export const noteSource = (flag: string, where: string): void => {
  sources.set(flag, where)
}

/**
 * `message` with, for each flag it names that came from the config file, where it was set: a bad
 * value found by the command itself still points at the line to fix.
 */
export const explainSource = (message: string): string => {
  const from = [...sources].filter(([flag]) => new RegExp(`${flag}(?![\\w-])`).test(message))
  return from.length === 0
    ? message
    : `${message} (${from.map(([flag, where]) => `${flag} is set in ${where}`).join("; ")})`
}
