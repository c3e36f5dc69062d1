/**
 * The logs of the long-running programs (`picus server`, `picus peer`): one line per event, at
 * `--log-level` and above, as today's text or as pino-style JSON (`--log-format json`): one object
 * per line with `level` (pino's numbers), `time` (epoch ms), `pid`, `hostname`, `msg` and the log's
 * annotations and spans as fields. What a command prints as its output is not a log.
 */
import { hostname } from "node:os"
import type { Command } from "cac"
import { Cause, Effect, Layer, Logger, type LogLevel, References } from "effect"
import { EXIT_USAGE, exitWith, UsageError } from "./commandLine.ts"

export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const
export type LogLevelName = (typeof LOG_LEVELS)[number]
export const LOG_FORMATS = ["text", "json"] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

export interface LoggingFlags {
  readonly logLevel?: string
  readonly logFormat?: string
}

export interface LoggingOptions {
  readonly level: LogLevelName
  readonly format: LogFormat
}

/** The two flags, on a command of a long-running program. */
export const loggingOptions = (command: Command): Command =>
  command
    .option("--log-level <level>", "debug, info, warn or error (env PICUS_LOG_LEVEL, default info)")
    .option(
      "--log-format <format>",
      "text, or json: one pino-style object per line (env PICUS_LOG_FORMAT, default text)",
    )

const pick = <A extends string>(
  flag: string,
  env: string,
  allowed: ReadonlyArray<A>,
  given: string | undefined,
  fromEnv: string | undefined,
  fallback: A,
): A => {
  const value =
    given !== undefined && given !== ""
      ? given
      : fromEnv !== undefined && fromEnv !== ""
        ? fromEnv
        : undefined
  if (value === undefined) return fallback
  if ((allowed as ReadonlyArray<string>).includes(value)) return value as A
  const choices = `${allowed.slice(0, -1).join(", ")} or ${allowed.at(-1)}`
  throw new UsageError(`${flag} (or ${env}) must be ${choices}, got "${value}"`)
}

/** The flags, then PICUS_LOG_LEVEL and PICUS_LOG_FORMAT; a bad value is a UsageError naming the fix. */
export const resolveLogging = (
  flags: LoggingFlags,
  env: NodeJS.ProcessEnv = process.env,
): LoggingOptions => ({
  level: pick("--log-level", "PICUS_LOG_LEVEL", LOG_LEVELS, flags.logLevel, env.PICUS_LOG_LEVEL, "info"),
  format: pick(
    "--log-format",
    "PICUS_LOG_FORMAT",
    LOG_FORMATS,
    flags.logFormat,
    env.PICUS_LOG_FORMAT,
    "text",
  ),
})

const EFFECT_LEVEL: Record<LogLevelName, LogLevel.LogLevel> = {
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  error: "Error",
}

/** pino's level numbers. */
const PINO_LEVEL: Record<LogLevel.LogLevel, number> = {
  All: 10,
  Trace: 10,
  Debug: 20,
  Info: 30,
  Warn: 40,
  Error: 50,
  Fatal: 60,
  None: 60,
}

const RANK: Record<LogLevelName, number> = { debug: 20, info: 30, warn: 40, error: 50 }

const textOf = (part: unknown): string => {
  if (typeof part === "string") return part
  if (part instanceof Error) return part.message
  try {
    return JSON.stringify(part) ?? String(part)
  } catch {
    return String(part)
  }
}

/** One JSON line: the fields pino writes first, then the annotations and spans (never overriding them). */
export const jsonLine = (event: {
  readonly level: number
  readonly time: number
  readonly msg: string
  readonly fields?: Readonly<Record<string, unknown>>
  readonly err?: string
}): string => {
  const head = {
    level: event.level,
    time: event.time,
    pid: process.pid,
    hostname: hostname(),
    msg: event.msg,
  }
  const fields: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(event.fields ?? {})) if (!(key in head)) fields[key] = value
  return JSON.stringify({ ...head, ...fields, ...(event.err === undefined ? {} : { err: event.err }) })
}

/** Effect's log events as pino-style JSON lines on stdout. */
const jsonLogger = Logger.make<unknown, void>(({ message, logLevel, cause, fiber, date }) => {
  const fields: Record<string, unknown> = { ...fiber.getRef(References.CurrentLogAnnotations) }
  const now = date.getTime()
  for (const [label, start] of fiber.getRef(References.CurrentLogSpans)) fields[label] = now - start
  const parts = Array.isArray(message) ? message : [message]
  process.stdout.write(
    `${jsonLine({
      level: PINO_LEVEL[logLevel],
      time: now,
      msg: parts.map(textOf).join(" "),
      fields,
      ...(cause.reasons.length > 0 ? { err: Cause.pretty(cause) } : {}),
    })}\n`,
  )
})

export interface Logging extends LoggingOptions {
  /** Effect's logger and minimum level for these options: provide it to the program's effect. */
  readonly layer: Layer.Layer<never>
  /**
   * A status line of the program's own (outside Effect's logger, or printed plain in text mode): in
   * text mode printed as it is, on stdout or (`stderr`) stderr; in JSON mode a JSON log line.
   */
  readonly say: (line: string, options?: { readonly level?: LogLevelName; readonly stderr?: boolean }) => void
  /** The same, as an Effect. */
  readonly sayEffect: (line: string) => Effect.Effect<void>
  /** How a failure that ends the program is told (`error: ...` on stderr in text mode). */
  readonly fail: (message: string) => void
}

export const makeLogging = (options: LoggingOptions): Logging => {
  const minimum = Layer.succeed(References.MinimumLogLevel, EFFECT_LEVEL[options.level])
  const json = options.format === "json"
  const say: Logging["say"] = (line, how = {}) => {
    const level = how.level ?? "info"
    if (RANK[level] < RANK[options.level]) return
    if (json) process.stdout.write(`${jsonLine({ level: RANK[level], time: Date.now(), msg: line })}\n`)
    else if (how.stderr === true) console.error(line)
    else console.log(line)
  }
  return {
    ...options,
    layer: json ? Layer.merge(minimum, Logger.layer([jsonLogger])) : minimum,
    say,
    sayEffect: (line) => Effect.sync(() => say(line)),
    fail: (message) =>
      json
        ? process.stdout.write(`${jsonLine({ level: RANK.error, time: Date.now(), msg: message })}\n`)
        : console.error(`error: ${message}`),
  }
}

/** The logging of a program's flags and environment; a bad value exits 2 naming the fix. */
export const loggingFrom = (flags: LoggingFlags, env: NodeJS.ProcessEnv = process.env): Logging => {
  try {
    return makeLogging(resolveLogging(flags, env))
  } catch (error) {
    return exitWith(EXIT_USAGE, error instanceof Error ? error.message : String(error))
  }
}
