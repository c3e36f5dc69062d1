/**
 * Whether this instance can hear its peers right now. While Redis is away (reads fail, or hang
 * through reconnects) no peer can be heard: sessions do not time out meanwhile, and once it is back
 * every session gets a full grace period again, so an outage does not end in a storm of timeouts
 * for peers that were never silent. The same holds while the instances together are behind on the
 * uplink by more than a heartbeat: a silent session may only be one whose heartbeats are queued.
 *
 * Plain state owned by the uplink pump (one fiber); sessions only read it.
 */
export interface Hearing {
  /** Sessions may judge silence now. */
  readonly canHear: (now: number) => boolean
  readonly readStarted: (now: number) => void
  /** A read answered; true when the instance had been deaf (every session gets a fresh grace). */
  readonly readSucceeded: (now: number) => boolean
  readonly readFailed: () => void
  /** How far behind the uplink this instance, and all of them, read; true when just caught up. */
  readonly behind: (ownLagMs: number, sharedLagMs: number) => boolean
}

export const makeHearing = (options: {
  readonly readBlockMs: number
  readonly heartbeatMs: number
}): Hearing => {
  // A read blocks at most readBlockMs when Redis answers; half a second more means it does not.
  const deafAfterMs = options.readBlockMs + 500
  /** When the read in progress started (undefined between reads). */
  let readingSince: number | undefined
  let failed = false
  // Just after hearing again, a watchdog tick already queued in a session's mailbox must not judge
  // it before the fresh grace period (queued behind it) has reached it.
  let deafUntil = 0
  let behindMs = 0
  const deaf = (now: number) =>
    failed || now < deafUntil || (readingSince !== undefined && now - readingSince > deafAfterMs)
  return {
    canHear: (now) => !deaf(now) && behindMs < options.heartbeatMs,
    readStarted: (now) => {
      readingSince = now
    },
    readSucceeded: (now) => {
      const wasDeaf = deaf(now)
      readingSince = undefined
      failed = false
      if (wasDeaf) deafUntil = now + options.readBlockMs
      return wasDeaf
    },
    readFailed: () => {
      failed = true
      readingSince = undefined
    },
    behind: (ownLagMs, sharedLagMs) => {
      const wasBehind = behindMs >= options.heartbeatMs
      behindMs = Math.max(ownLagMs, sharedLagMs)
      return wasBehind && behindMs < options.heartbeatMs
    },
  }
}
