/** A command's effect run to its exit code (apart from commandLine.ts, which loads no Effect). */
import { Cause, Effect, Exit } from "effect"
import { EXIT_FAILED, EXIT_USAGE, UsageError } from "./commandLine.ts"
import { explainSource } from "./configSources.ts"

/**
 * Runs a command's effect and exits with its outcome: the number it succeeds with (0 when none),
 * 2 for a usage mistake (`isUsage`), 1 for any other failure. Failures are told (`tell`), not thrown.
 */
export const runCommand = (
  effect: Effect.Effect<unknown, unknown>,
  isUsage: (failure: unknown) => boolean = (failure) => failure instanceof UsageError,
  /** How the failure is told (a JSON log line with --log-format json). */
  tell: (message: string) => void = (message) => console.error(`error: ${message}`),
): void => {
  Effect.runPromiseExit(effect).then((exit) => {
    if (Exit.isSuccess(exit)) process.exit(typeof exit.value === "number" ? exit.value : 0)
    const failure = Cause.squash(exit.cause)
    tell(explainSource(failure instanceof Error ? failure.message : String(failure)))
    process.exit(isUsage(failure) ? EXIT_USAGE : EXIT_FAILED)
  })
}
