import { Effect, Schedule } from "effect"

/**
 * Polls `check` until it gives a value, and returns it; dies naming `what` after `timeoutMs`. The one
 * place tests wait on real time: a real Redis, PostgreSQL or process answers when it answers. Logic
 * that only waits on the clock is tested with TestClock instead.
 */
export const eventually = <A, E, R>(
  check: Effect.Effect<A | undefined, E, R>,
  what: string,
  options: { readonly timeoutMs?: number; readonly intervalMs?: number } = {},
): Effect.Effect<A, E, R> =>
  check.pipe(
    Effect.flatMap((value) => (value === undefined ? Effect.fail(notYet) : Effect.succeed(value))),
    Effect.retry({
      while: (e) => e === notYet,
      schedule: Schedule.spaced(options.intervalMs ?? 20),
    }),
    Effect.catchIf(
      (e): e is typeof notYet => e === notYet,
      () => Effect.die(new Error(`never happened: ${what}`)),
    ),
    Effect.timeoutOrElse({
      duration: options.timeoutMs ?? 10_000,
      orElse: () => Effect.die(new Error(`timed out waiting for ${what}`)),
    }),
  )

/** `eventually` for a condition on plain state. */
export const eventuallyTrue = (
  condition: () => boolean,
  what: string,
  options?: { readonly timeoutMs?: number; readonly intervalMs?: number },
): Effect.Effect<void> =>
  eventually(
    Effect.sync(() => (condition() ? true : undefined)),
    what,
    options,
  ).pipe(Effect.asVoid)

const notYet = Symbol("not yet")
