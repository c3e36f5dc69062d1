/**
 * What a simulated fleet counts. Plain mutable counters: the fleet updates them on its hot path,
 * and readers take snapshots.
 */

export interface Counters {
  registrationsSent: number
  /** Registrations sent again because no answer came in time (included in registrationsSent). */
  registrationsResent: number
  accepted: number
  rejected: number
  heartbeatsSent: number
  jobsReceived: number
  /** Jobs for a session the peer does not hold (stale, or not logged in). */
  jobsIgnored: number
  resultsSent: number
  shutdowns: number
  logoutsSent: number
  sessionsExpired: number
  ticketsSubmitted: number
  submitFailures: number
  malformed: number
  sendFailures: number
  readFailures: number
}

export const emptyCounters = (): Counters => ({
  registrationsSent: 0,
  registrationsResent: 0,
  accepted: 0,
  rejected: 0,
  heartbeatsSent: 0,
  jobsReceived: 0,
  jobsIgnored: 0,
  resultsSent: 0,
  shutdowns: 0,
  logoutsSent: 0,
  sessionsExpired: 0,
  ticketsSubmitted: 0,
  submitFailures: 0,
  malformed: 0,
  sendFailures: 0,
  readFailures: 0,
})

/** Upper bounds (ms) of the histogram's buckets; the last bucket takes everything above. */
export const LATENCY_BOUNDS_MS = [
  1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000,
] as const

export interface LatencySummary {
  readonly count: number
  readonly minMs: number | null
  readonly p50Ms: number | null
  readonly p90Ms: number | null
  readonly p99Ms: number | null
  readonly maxMs: number | null
  /** Samples at or below each bound (`le`), not cumulative; `le: null` is above the last bound. */
  readonly buckets: ReadonlyArray<{ readonly le: number | null; readonly count: number }>
}

/** Keeps every sample (up to a cap) for exact percentiles, and a bucketed view for quick reading. */
export class LatencyHistogram {
  private readonly samples: Array<number> = []
  private readonly counts: Array<number> = Array.from({ length: LATENCY_BOUNDS_MS.length + 1 }, () => 0)
  private total = 0
  private readonly maxSamples: number

  constructor(maxSamples = 1_000_000) {
    this.maxSamples = maxSamples
  }

  record(ms: number): void {
    this.total++
    let i = 0
    while (i < LATENCY_BOUNDS_MS.length && ms > LATENCY_BOUNDS_MS[i]!) i++
    this.counts[i]!++
    if (this.samples.length < this.maxSamples) this.samples.push(ms)
  }

  summary(): LatencySummary {
    const sorted = [...this.samples].sort((a, b) => a - b)
    const at = (q: number) =>
      sorted.length === 0 ? null : sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!
    return {
      count: this.total,
      minMs: sorted[0] ?? null,
      p50Ms: at(0.5),
      p90Ms: at(0.9),
      p99Ms: at(0.99),
      maxMs: sorted.at(-1) ?? null,
      buckets: this.counts.map((count, i) => ({ le: LATENCY_BOUNDS_MS[i] ?? null, count })),
    }
  }
}

/** One second of the run: what happened in it, and how many peers were logged in at its end. */
export interface Tick {
  /** Seconds since the fleet started. */
  readonly t: number
  readonly online: number
  readonly delta: Counters
}

export const diffCounters = (now: Counters, before: Counters): Counters => {
  const out = emptyCounters()
  for (const key of Object.keys(out) as Array<keyof Counters>) out[key] = now[key] - before[key]
  return out
}
