import { wallNow } from "./clock.ts"
import { percentiles } from "./stats.ts"
import type { RunResult } from "./system.ts"

/**
 * Per-ticket creation and commit times (wall clock, ms) of one run, for systems whose producer and
 * committer live in this process. Tickets are numbered 0..capacity-1.
 */
export class Tracker {
  readonly created: Float64Array
  readonly committed: Float64Array
  #committedCount = 0
  #expected: number
  #lastProgress = wallNow()
  #wake: (() => void) | undefined

  constructor(capacity: number) {
    this.created = new Float64Array(capacity).fill(Number.NaN)
    this.committed = new Float64Array(capacity).fill(Number.NaN)
    this.#expected = capacity
  }

  get committedCount(): number {
    return this.#committedCount
  }

  /** Records the creation of ticket i (now, unless given). */
  markCreated(i: number, at: number = wallNow()): void {
    this.created[i] = at
  }

  /** Records the commit of ticket i; a second commit of the same ticket is ignored (returns false). */
  markCommitted(i: number, at: number = wallNow()): boolean {
    if (!Number.isNaN(this.committed[i]!)) return false
    this.committed[i] = at
    this.#committedCount++
    this.#lastProgress = at
    if (this.#committedCount >= this.#expected) this.#wake?.()
    return true
  }

  /**
   * Resolves once `expected` tickets are committed; rejects when no result has been committed for
   * `stallMs` (something was lost, or the system is stuck).
   */
  async waitAll(expected: number = this.#expected, stallMs = 30_000): Promise<void> {
    this.#expected = expected
    this.#lastProgress = Math.max(this.#lastProgress, wallNow())
    while (this.#committedCount < expected) {
      const woken = new Promise<void>((resolve) => {
        this.#wake = resolve
      })
      let timer: NodeJS.Timeout | undefined
      const tick = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 250)
      })
      await Promise.race([woken, tick])
      clearTimeout(timer)
      this.#wake = undefined
      if (this.#committedCount < expected && wallNow() - this.#lastProgress > stallMs) {
        throw new Error(
          `stalled: ${this.#committedCount} of ${expected} results committed, none in the last ${stallMs} ms`,
        )
      }
    }
  }

  /**
   * The run's result over tickets from..from+count-1 (all must be created and committed); those
   * before `from` were a warm-up, not counted.
   */
  result(
    system: string,
    mode: RunResult["mode"],
    count: number,
    errors: number,
    targetRate?: number,
    from = 0,
  ): RunResult {
    const latencies = new Float64Array(count)
    let first = Number.POSITIVE_INFINITY
    let last = Number.NEGATIVE_INFINITY
    for (let i = from; i < from + count; i++) {
      const c = this.created[i]!
      const d = this.committed[i]!
      if (Number.isNaN(c) || Number.isNaN(d))
        throw new Error(`${system}: ticket ${i} has no creation or commit time`)
      latencies[i - from] = d - c
      if (c < first) first = c
      if (d > last) last = d
    }
    const [p50, p95, p99, max] = percentiles(latencies, [50, 95, 99, 100])
    const durationMs = last - first
    return {
      system,
      mode,
      ...(targetRate === undefined ? {} : { targetRate }),
      tickets: count,
      durationMs,
      throughput: (count / durationMs) * 1000,
      latencyMs: { p50: p50!, p95: p95!, p99: p99!, max: max! },
      errors,
    }
  }
}
