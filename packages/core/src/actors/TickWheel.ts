import { Effect, type Scope } from "effect"

/**
 * One timer for many sessions' watchdog ticks. A fiber and a timer per session woke ten thousand
 * idle sessions two thousand times a second, each wake leaving garbage that outlived the young
 * generation (a five-second sleep), so an idle fleet paid mostly for the collector. Here each
 * callback sits in one of `slots` slots; every `periodMs / slots` one slot's callbacks run, so each
 * runs once per period and the work is spread over it.
 */
export interface TickWheel {
  readonly periodMs: number
  /** Calls `tick` once per period from now on; the returned function stops it. */
  readonly register: (tick: () => void) => () => void
}

/** A wheel whose fiber lives in the current scope; time comes from the Clock (TestClock in tests). */
export const makeTickWheel = Effect.fnUntraced(function* (
  periodMs: number,
  slots: number,
): Effect.fn.Return<TickWheel, never, Scope.Scope> {
  const count = Math.max(1, Math.floor(slots))
  const wheel: Array<Set<() => void>> = Array.from({ length: count }, () => new Set())
  let next = 0
  let current = 0
  yield* Effect.sync(() => {
    current = (current + 1) % count
    for (const tick of wheel[current]!) {
      try {
        tick()
      } catch {
        // A tick only offers to a mailbox; one that throws must not stop the others'.
      }
    }
  }).pipe(Effect.delay(periodMs / count), Effect.forever, Effect.forkScoped)
  return {
    periodMs,
    register: (tick) => {
      const slot = wheel[next]!
      next = (next + 1) % count
      slot.add(tick)
      return () => void slot.delete(tick)
    },
  }
})

/** Slots of about a quarter second each: a period's ticks spread, none later than a slot. */
export const wheelSlots = (periodMs: number): number => Math.max(1, Math.round(periodMs / 250))
