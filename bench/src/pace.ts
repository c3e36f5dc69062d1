import { sleep, wallNow } from "./clock.ts"

/**
 * Open-loop submission at a fixed rate: calls `submit(first, count)` for tickets due so far (ticket k
 * is due at start + k / rate), never waiting for earlier submissions to finish, until
 * round(rate * duration) tickets are submitted. Resolves with that total once every submit promise
 * has settled (rejections are the caller's to count; they are swallowed here).
 */
export const submitAtRate = async (
  ratePerSecond: number,
  durationMs: number,
  submit: (first: number, count: number) => Promise<void>,
): Promise<number> => {
  const total = Math.max(1, Math.round((ratePerSecond * durationMs) / 1000))
  const pending: Promise<void>[] = []
  const start = wallNow()
  let sent = 0
  while (sent < total) {
    const due = Math.min(total, Math.floor(((wallNow() - start) * ratePerSecond) / 1000) + 1)
    if (due > sent) {
      pending.push(submit(sent, due - sent).catch(() => {}))
      sent = due
    }
    if (sent < total) {
      const nextAt = start + (sent * 1000) / ratePerSecond
      await sleep(Math.max(0, nextAt - wallNow()))
    }
  }
  await Promise.all(pending)
  return total
}

/** Tickets submitted and answered before a rate run's window, not counted (see BenchSystem.atRate). */
export interface Warmup<Submit> {
  readonly tickets: number
  /** Submits them (numbered from 0) through `submit`; resolves with how many. */
  readonly produce: (submit: Submit) => Promise<number>
}

/** A warm-up of `warmupMs` at the run's rate, or none. */
export const warmupOf = <Submit>(
  ratePerSecond: number,
  warmupMs: number,
  produce: (submit: Submit) => Promise<number>,
): Warmup<Submit> | undefined =>
  warmupMs > 0 ? { tickets: Math.max(1, Math.round((ratePerSecond * warmupMs) / 1000)), produce } : undefined
