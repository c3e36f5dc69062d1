import { Deferred, Effect, Exit } from "effect"

/**
 * The one piece of process plumbing the server and the peer share.
 *
 * Completes on the first SIGINT or SIGTERM; a second one exits the process at once (130). A
 * repeat within `echoMs` is the same Ctrl+C arriving twice, not the user insisting: a terminal
 * signals the whole process group, and `pnpm` forwards the signal to its child as well.
 */
export const firstSignal = (echoMs = 500) =>
  Effect.gen(function* () {
    const signal = yield* Deferred.make<NodeJS.Signals>()
    let firstAt = 0
    const onSignal = (name: NodeJS.Signals) => {
      if (firstAt === 0) {
        firstAt = Date.now()
        Deferred.doneUnsafe(signal, Exit.succeed(name))
        return
      }
      if (Date.now() - firstAt < echoMs) return
      console.error(`${name} again: exiting now`)
      process.exit(130)
    }
    process.on("SIGINT", onSignal)
    process.on("SIGTERM", onSignal)
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        process.removeListener("SIGINT", onSignal)
        process.removeListener("SIGTERM", onSignal)
      }),
    )
    return Deferred.await(signal)
  })
