import { hostname } from "node:os"
import { TransportRedis } from "@picus/core"
import { Config, ConfigProvider, Effect, Exit, Option, type Redacted, Schema } from "effect"
import { defaultCatalogPath } from "./catalog.ts"
import { type ClusterKey, ClusterKeyError, clusterKeyOf, readKeyFile } from "./clusterKey.ts"
import { type HttpAddress, parseHttpAddress } from "./http/address.ts"

/** Defaults shared with compose.yaml and the README: local PostgreSQL and Redis on their usual ports. */
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/picus"
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
export const DEFAULT_SHUTDOWN_REASON = "server stopped by operator"

export interface ServerConfig {
  readonly databaseUrl: string
  readonly redisUrl: string
  readonly redisPrefix: string
  readonly serverId: string
  /** PICUS_TOKENS: enrollment tokens accepted besides those in the database (comma-separated). */
  readonly environmentTokens: Redacted.Redacted<string> | undefined
  readonly shutdownReason: string
  readonly catalogPath: string
  readonly heartbeatMs: number
  readonly graceMs: number
  readonly drainMs: number
  readonly maxInFlight: number
  readonly leaseMs: number
  /** A ticket not delivered by this long after its creation ends undeliverable. */
  readonly deliveryDeadlineMs: number
  /** PICUS_RETAIN_DAYS: results, terminal tickets and log rows older than this are pruned; 0 keeps all. */
  readonly retainDays: number
  /**
   * PICUS_REDIS_USERS (on, the default, or off): each peer gets Redis users of its own, limited to
   * what it needs (docs/security.md). Off is the open mode: every party shares one Redis login.
   */
  readonly redisUsers: boolean
  /** PICUS_REDIS_CA, PICUS_REDIS_SERVERNAME, PICUS_REDIS_CERT, PICUS_REDIS_KEY, for a rediss:// URL. */
  readonly redisTls: TransportRedis.RedisTlsOptions | undefined
  /**
   * PICUS_CLUSTER_KEY or PICUS_CLUSTER_KEY_FILE (with PICUS_CLUSTER_KEY_PREVIOUS[_FILE] after a
   * rotation): signs what the server tells peers; session tokens derive from it. Only serving needs
   * it (see requireClusterKey).
   */
  readonly clusterKey: ClusterKey | undefined
  /** PICUS_HTTP: where to serve health, readiness and metrics (`host:port`); off when unset. */
  readonly http: HttpAddress | undefined
}

/** Command-line options as cac gives them (camelCase); each wins over its environment variable. */
export interface ServerFlags {
  readonly databaseUrl?: string
  readonly redisUrl?: string
  readonly redisPrefix?: string
  readonly serverId?: string
  readonly shutdownReason?: string
  readonly catalog?: string
  readonly heartbeatMs?: number | string
  readonly graceMs?: number | string
  readonly drainMs?: number | string
  readonly maxInFlight?: number | string
  readonly leaseMs?: number | string
  readonly deliveryDeadlineMs?: number | string
  readonly retainDays?: number | string
  readonly redisUsers?: string
  readonly clusterKeyFile?: string
  readonly http?: string
}

export class ConfigError extends Error {
  override readonly name = "ConfigError"
}

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

/** A setting: its flag (if any), its environment variable, how it is read and what it says when wrong. */
interface Setting<A> {
  readonly flag?: keyof ServerFlags
  readonly env: string
  readonly config: (name: string) => Config.Config<A>
  readonly expected: string
}

const text = (flag: keyof ServerFlags | undefined, env: string): Setting<Option.Option<string>> => ({
  ...(flag ? { flag } : {}),
  env,
  config: (name) => Config.option(Config.String(name)),
  expected: "text",
})
const positive = (flag: keyof ServerFlags, env: string): Setting<Option.Option<number>> => ({
  flag,
  env,
  config: (name) => Config.option(Config.schema(PositiveInt, name)),
  expected: "a positive whole number",
})
const wholeNumber = (flag: keyof ServerFlags, env: string): Setting<Option.Option<number>> => ({
  flag,
  env,
  config: (name) => Config.option(Config.schema(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)), name)),
  expected: "a whole number, 0 or more",
})
const onOff = (flag: keyof ServerFlags, env: string): Setting<Option.Option<"on" | "off">> => ({
  flag,
  env,
  config: (name) => Config.option(Config.schema(Schema.Literals(["on", "off"]), name)),
  expected: "on or off",
})
const secret = (env: string): Setting<Option.Option<Redacted.Redacted<string>>> => ({
  env,
  config: (name) => Config.option(Config.Redacted(name)),
  expected: "a secret",
})

const settings = {
  databaseUrl: text("databaseUrl", "DATABASE_URL"),
  redisUrl: text("redisUrl", "REDIS_URL"),
  redisPrefix: text("redisPrefix", "PICUS_REDIS_PREFIX"),
  serverId: text("serverId", "PICUS_SERVER_ID"),
  shutdownReason: text("shutdownReason", "PICUS_SHUTDOWN_REASON"),
  catalogPath: text("catalog", "PICUS_CATALOG"),
  heartbeatMs: positive("heartbeatMs", "PICUS_HEARTBEAT_MS"),
  graceMs: positive("graceMs", "PICUS_GRACE_MS"),
  drainMs: positive("drainMs", "PICUS_DRAIN_MS"),
  maxInFlight: positive("maxInFlight", "PICUS_MAX_IN_FLIGHT"),
  leaseMs: positive("leaseMs", "PICUS_LEASE_MS"),
  deliveryDeadlineMs: positive("deliveryDeadlineMs", "PICUS_DELIVERY_DEADLINE_MS"),
  retainDays: wholeNumber("retainDays", "PICUS_RETAIN_DAYS"),
  redisUsers: onOff("redisUsers", "PICUS_REDIS_USERS"),
  http: text("http", "PICUS_HTTP"),
  environmentTokens: secret("PICUS_TOKENS"),
  clusterKey: secret("PICUS_CLUSTER_KEY"),
  clusterKeyFile: text("clusterKeyFile", "PICUS_CLUSTER_KEY_FILE"),
  clusterKeyPrevious: secret("PICUS_CLUSTER_KEY_PREVIOUS"),
  clusterKeyPreviousFile: text(undefined, "PICUS_CLUSTER_KEY_PREVIOUS_FILE"),
  retiredSessionKey: secret("PICUS_SESSION_KEY"),
} as const

const flagName = (flag: string) => `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`

/** Flags win over the environment: both are read through one Effect Config provider. */
const providerOf = (flags: ServerFlags, env: NodeJS.ProcessEnv) => {
  const fromFlags: Record<string, string> = {}
  for (const setting of Object.values(settings) as ReadonlyArray<Setting<unknown>>) {
    const value = setting.flag === undefined ? undefined : flags[setting.flag]
    if (value !== undefined && value !== "") fromFlags[setting.env] = String(value)
  }
  return ConfigProvider.fromEnvRecord(fromFlags).pipe(
    ConfigProvider.orElse(ConfigProvider.fromEnvRecord({ ...env })),
  )
}

/** Reads one setting; a wrong value names the flag, the variable, what was expected and (unless secret) what was given. */
const read = <A>(
  provider: ConfigProvider.ConfigProvider,
  setting: Setting<A>,
  flags: ServerFlags,
  env: NodeJS.ProcessEnv,
): A => {
  const exit = Effect.runSyncExit(setting.config(setting.env).parse(provider))
  if (Exit.isSuccess(exit)) return exit.value
  const where = setting.flag ? `${flagName(setting.flag)} (or ${setting.env})` : setting.env
  const given =
    setting.expected === "a secret"
      ? ""
      : `, got "${(setting.flag && flags[setting.flag]) ?? env[setting.env]}"`
  throw new ConfigError(`${where} must be ${setting.expected}${given}`)
}

/** A key given directly (`value`) or in a file (`file`), not both; where it came from, for messages. */
const keyFrom = (
  value: Option.Option<Redacted.Redacted<string>>,
  file: Option.Option<string>,
  names: { readonly value: string; readonly file: string },
): { readonly seed: Redacted.Redacted<string>; readonly where: string } | undefined => {
  if (Option.isSome(value) && Option.isSome(file))
    throw new ConfigError(`set ${names.value} or ${names.file}, not both`)
  if (Option.isSome(value)) return { seed: value.value, where: names.value }
  if (Option.isSome(file))
    return { seed: readKeyFile(file.value, names.file), where: `${names.file} (${file.value})` }
  return undefined
}

/** The configured cluster key; undefined when none is set. Throws ConfigError naming what to fix. */
const clusterKeyFrom = (read: <A>(setting: Setting<A>) => A): ClusterKey | undefined => {
  if (Option.isSome(read(settings.retiredSessionKey)))
    throw new ConfigError(
      "PICUS_SESSION_KEY is no longer read: session tokens derive from the cluster key " +
        "(PICUS_CLUSTER_KEY or PICUS_CLUSTER_KEY_FILE); unset it",
    )
  try {
    const current = keyFrom(read(settings.clusterKey), read(settings.clusterKeyFile), {
      value: "PICUS_CLUSTER_KEY",
      file: "PICUS_CLUSTER_KEY_FILE",
    })
    const previous = keyFrom(read(settings.clusterKeyPrevious), read(settings.clusterKeyPreviousFile), {
      value: "PICUS_CLUSTER_KEY_PREVIOUS",
      file: "PICUS_CLUSTER_KEY_PREVIOUS_FILE",
    })
    if (current === undefined) {
      if (previous !== undefined)
        throw new ConfigError(`${previous.where} is set without a current key (PICUS_CLUSTER_KEY)`)
      return undefined
    }
    return clusterKeyOf(current.seed, previous, current.where)
  } catch (error) {
    throw error instanceof ClusterKeyError ? new ConfigError(error.message) : error
  }
}

/** The cluster key, which serving needs: a server without one refuses to start, naming the fix. */
export const requireClusterKey = (config: ServerConfig): ClusterKey => {
  if (config.clusterKey !== undefined) return config.clusterKey
  throw new ConfigError(
    "no cluster key: set PICUS_CLUSTER_KEY_FILE to a file made by " +
      "`picus cluster-key new --out <file>` (or PICUS_CLUSTER_KEY to its contents); " +
      "every instance of the cluster needs the same key",
  )
}

/**
 * The server's configuration, through Effect's Config: each flag wins over its environment
 * variable, then the defaults. Secrets stay `Redacted` (they print as `<redacted>`). Throws
 * ConfigError naming what to fix.
 */
export const resolveServerConfig = (
  flags: ServerFlags,
  env: NodeJS.ProcessEnv = process.env,
): ServerConfig => {
  const provider = providerOf(flags, env)
  const get = <A>(setting: Setting<Option.Option<A>>, fallback: A): A =>
    Option.getOrElse(read(provider, setting, flags, env), () => fallback)
  const heartbeatMs = get(settings.heartbeatMs, 5_000)
  const redisPrefix = get(settings.redisPrefix, "picus")
  // Redis user names and ACL rules are made of the prefix; a space would split them apart.
  if (redisPrefix === "" || /\s/.test(redisPrefix))
    throw new ConfigError(
      `--redis-prefix (or PICUS_REDIS_PREFIX) must be non-empty, without spaces, got "${redisPrefix}"`,
    )
  return {
    databaseUrl: get(settings.databaseUrl, DEFAULT_DATABASE_URL),
    redisUrl: get(settings.redisUrl, DEFAULT_REDIS_URL),
    redisPrefix,
    serverId: get(settings.serverId, `${hostname()}-${process.pid}`),
    environmentTokens: Option.getOrUndefined(read(provider, settings.environmentTokens, flags, env)),
    shutdownReason: get(settings.shutdownReason, DEFAULT_SHUTDOWN_REASON),
    catalogPath: get(settings.catalogPath, defaultCatalogPath),
    heartbeatMs,
    graceMs: get(settings.graceMs, heartbeatMs * 3),
    drainMs: get(settings.drainMs, 3_000),
    maxInFlight: get(settings.maxInFlight, 8),
    leaseMs: get(settings.leaseMs, 15_000),
    deliveryDeadlineMs: get(settings.deliveryDeadlineMs, 3_600_000),
    retainDays: get(settings.retainDays, 30),
    redisUsers: get(settings.redisUsers, "on") === "on",
    redisTls: TransportRedis.redisTlsFromEnv(env),
    clusterKey: clusterKeyFrom((setting) => read(provider, setting, flags, env)),
    http: httpOf(Option.getOrUndefined(read(provider, settings.http, flags, env))),
  }
}

const httpOf = (text: string | undefined): HttpAddress | undefined => {
  if (text === undefined || text === "" || text === "off") return undefined
  const address = parseHttpAddress(text)
  if (address === undefined)
    throw new ConfigError(
      `--http (or PICUS_HTTP) must be host:port or a port, e.g. 127.0.0.1:8080; got "${text}"`,
    )
  return address
}
