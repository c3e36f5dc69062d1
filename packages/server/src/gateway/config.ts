import type { SessionConfig } from "@picus/core"
import { Redacted } from "effect"
import type { ClusterKey } from "../clusterKey.ts"
import type { ServerConfig } from "../config.ts"
import { type EnrollmentTokens, enrollmentTokensFrom } from "../tokens.ts"
import type { RejectionRate } from "./RejectionLog.ts"

/**
 * Checks a test may turn off, to show the attack each one stops succeeding without it. Nothing
 * outside tests sets them: no flag, variable or file reaches this.
 */
export interface Weakened {
  /** Messages to peers go out unsigned. */
  readonly unsigned?: boolean
  /** Registrations' signatures, and the binding of peer ids to identity keys, are not checked. */
  readonly identity?: boolean
  /** A signed registration's `ts` is not checked (neither against the last one nor the clock). */
  readonly replay?: boolean
  /** A token bound to a peer id is taken for any peer id. */
  readonly peerBinding?: boolean
  /** A sealed session's messages are taken without their MAC. */
  readonly mac?: boolean
}

export interface GatewayConfig
  extends Omit<SessionConfig, "sessionKey" | "clusterKey" | "keyEndorsement" | "weakened"> {
  /**
   * How long this instance's session leases (and its marks on its peers in Redis) hold without
   * renewal; renewed every third of it. The sessions of an instance silent for this long are taken
   * over by the others, with their tickets; their peers keep their sessions.
   */
  readonly leaseMs: number
  /** Signs every message to a peer; session tokens derive from it. The same on every instance. */
  readonly clusterKey: ClusterKey
  /**
   * Registrations of one peer id are admitted at least this far apart (default 2 s): one credential
   * cannot open sessions (each with its tickets and log rows) as fast as it can send.
   */
  readonly registerIntervalMs?: number
  /** Tests only: see Weakened. */
  readonly weakened?: Weakened
  /** A ticket not delivered by this long after its creation ends undeliverable. */
  readonly deliveryDeadlineMs: number
  /** Days kept of results, terminal tickets and log rows (see Retention.ts); 0 or absent keeps all. */
  readonly retainDays?: number
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
  clusterKey: ClusterKey,
  extraTokens: ReadonlyArray<string> = [],
): GatewayConfig => ({
  serverId: config.serverId,
  leaseMs: config.leaseMs,
  clusterKey,
  deliveryDeadlineMs: config.deliveryDeadlineMs,
  retainDays: config.retainDays,
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
