import type { SessionConfig } from "@picus/core"
import { Redacted } from "effect"
import type { ServerConfig } from "../config.ts"
import { type EnrollmentTokens, enrollmentTokensFrom } from "../tokens.ts"
import type { RejectionRate } from "./RejectionLog.ts"

export interface GatewayConfig extends Omit<SessionConfig, "sessionKey"> {
  /**
   * How long this instance's session leases (and its marks on its peers in Redis) hold without
   * renewal; renewed every third of it. The sessions of an instance silent for this long are taken
   * over by the others, with their tickets; their peers keep their sessions.
   */
  readonly leaseMs: number
  /** The cluster's session key; absent: the one kept in PostgreSQL (created by the first instance). */
  readonly sessionKey?: Uint8Array | undefined
  /** A ticket not delivered by this long after its creation ends undeliverable. */
  readonly deliveryDeadlineMs: number
  readonly enrollment: EnrollmentTokens
  /** Uplink entries per read. */
  readonly batchSize: number
  /** A registration older than this when it is read is dropped: its peer has given up on it. */
  readonly staleRegisterMs: number
  /** Unacknowledged uplink entries idle this long are taken over (their instance died). */
  readonly reclaimIdleMs: number
  /** At shutdown, how long to wait for results of jobs already running. */
  readonly drainMs: number
  /**
   * Tries of an uplink entry that fails for a reason not known to be passing (or permanent) before
   * it is set aside as a dead letter. Default 5.
   */
  readonly maxAttempts?: number
  /** First wait before an entry that failed is tried again; doubles up to `retryMaxMs`. Default 1 s. */
  readonly retryBaseMs?: number
  /** Longest wait between tries of a failed entry. Default 5 s. */
  readonly retryMaxMs?: number
  /** Refused registrations logged one row each, beyond which they are counted. Default 5/s, 50 at once. */
  readonly rejectionRate?: RejectionRate
}

/** The gateway a server process runs with its configuration; `extraTokens` are accepted too. */
export const gatewayConfigFrom = (
  config: ServerConfig,
  extraTokens: ReadonlyArray<string> = [],
): GatewayConfig => ({
  serverId: config.serverId,
  leaseMs: config.leaseMs,
  sessionKey: config.sessionKey,
  deliveryDeadlineMs: config.deliveryDeadlineMs,
  deadlineSlackMs: 30_000,
  heartbeatMs: config.heartbeatMs,
  graceMs: config.graceMs,
  drainMs: config.drainMs,
  enrollment: enrollmentTokensFrom(
    [config.environmentTokens ? Redacted.value(config.environmentTokens) : "", ...extraTokens].join(","),
  ),
  batchSize: 128,
  staleRegisterMs: 60_000,
  reclaimIdleMs: 30_000,
})
