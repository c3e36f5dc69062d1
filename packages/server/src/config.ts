import { createHash } from "node:crypto"
import { hostname } from "node:os"
import { defaultCatalogPath } from "./catalog.ts"

/** Defaults shared with compose.yaml and the README: local PostgreSQL and Redis on their usual ports. */
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/picus"
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379"
export const DEFAULT_SHUTDOWN_REASON = "server stopped by operator"

export interface ServerConfig {
  readonly databaseUrl: string
  readonly redisUrl: string
  readonly redisPrefix: string
  readonly serverId: string
  /** PICUS_TOKENS: enrollment tokens accepted besides those in the database. */
  readonly environmentTokens: string | undefined
  readonly shutdownReason: string
  readonly catalogPath: string
  readonly heartbeatMs: number
  readonly graceMs: number
  readonly drainMs: number
  readonly maxInFlight: number
  readonly leaseMs: number
  /** A ticket not delivered by this long after its creation ends undeliverable. */
  readonly deliveryDeadlineMs: number
  /** PICUS_SESSION_KEY: the key session tokens derive from; else one kept in PostgreSQL. */
  readonly sessionKey: Uint8Array | undefined
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
}

export class ConfigError extends Error {
  override readonly name = "ConfigError"
}

const positiveInt = (name: string, value: number | string | undefined, fallback: number): number => {
  if (value === undefined || value === "") return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n <= 0)
    throw new ConfigError(`${name} must be a positive whole number, got "${value}"`)
  return n
}

/** At least 32 characters of secret; its SHA-256 is the key. */
const sessionKeyFrom = (value: string | undefined): Uint8Array | undefined => {
  if (value === undefined || value === "") return undefined
  if (value.length < 32) throw new ConfigError("PICUS_SESSION_KEY must be at least 32 characters")
  return new Uint8Array(createHash("sha256").update(value).digest())
}

export const resolveServerConfig = (
  flags: ServerFlags,
  env: NodeJS.ProcessEnv = process.env,
): ServerConfig => {
  const heartbeatMs = positiveInt("--heartbeat-ms", flags.heartbeatMs ?? env.PICUS_HEARTBEAT_MS, 5_000)
  return {
    databaseUrl: flags.databaseUrl ?? env.DATABASE_URL ?? DEFAULT_DATABASE_URL,
    redisUrl: flags.redisUrl ?? env.REDIS_URL ?? DEFAULT_REDIS_URL,
    redisPrefix: flags.redisPrefix ?? env.PICUS_REDIS_PREFIX ?? "picus",
    serverId: flags.serverId ?? env.PICUS_SERVER_ID ?? `${hostname()}-${process.pid}`,
    environmentTokens: env.PICUS_TOKENS,
    shutdownReason: flags.shutdownReason ?? env.PICUS_SHUTDOWN_REASON ?? DEFAULT_SHUTDOWN_REASON,
    catalogPath: flags.catalog ?? env.PICUS_CATALOG ?? defaultCatalogPath,
    heartbeatMs,
    graceMs: positiveInt("--grace-ms", flags.graceMs ?? env.PICUS_GRACE_MS, heartbeatMs * 3),
    drainMs: positiveInt("--drain-ms", flags.drainMs ?? env.PICUS_DRAIN_MS, 3_000),
    maxInFlight: positiveInt("--max-in-flight", flags.maxInFlight ?? env.PICUS_MAX_IN_FLIGHT, 8),
    leaseMs: positiveInt("--lease-ms", flags.leaseMs ?? env.PICUS_LEASE_MS, 15_000),
    deliveryDeadlineMs: positiveInt(
      "--delivery-deadline-ms",
      flags.deliveryDeadlineMs ?? env.PICUS_DELIVERY_DEADLINE_MS,
      3_600_000,
    ),
    sessionKey: sessionKeyFrom(env.PICUS_SESSION_KEY),
  }
}
