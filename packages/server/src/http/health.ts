/**
 * What the HTTP probes answer, from what the gateway already knows (no query of its own): the
 * lease renewed recently means PostgreSQL answers, the uplink read recently means Redis does.
 */

export interface GatewayStatus {
  readonly sessions: number
  readonly retrying: number
  readonly accepting: boolean
  readonly leaseRenewedAt: number | undefined
  readonly lastReadAt: number | undefined
  readonly lagMs: number
}

export interface Readiness {
  readonly ready: boolean
  /** Each check that failed, with what it means for the operator. */
  readonly failing: ReadonlyArray<string>
}

/**
 * Ready when the lease was renewed within one lease (renewals come every third of it), the uplink
 * was read within `readWithinMs` (a read blocks for at most a few seconds), and the instance is
 * not shutting down.
 */
export const readinessOf = (
  status: GatewayStatus,
  now: number,
  limits: { readonly leaseMs: number; readonly readWithinMs: number },
): Readiness => {
  const failing: Array<string> = []
  if (!status.accepting) failing.push("shutting down")
  if (status.leaseRenewedAt === undefined || now - status.leaseRenewedAt > limits.leaseMs)
    failing.push("PostgreSQL: the instance's lease was not renewed within its lease")
  if (status.lastReadAt === undefined || now - status.lastReadAt > limits.readWithinMs)
    failing.push("Redis: the uplink was not read recently")
  return { ready: failing.length === 0, failing }
}
