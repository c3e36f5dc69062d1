import { Effect } from "effect"
import { openJournal } from "../../src/journal.ts"

// A peer's journal in a process of its own, killed by the test once it says "kept": what a
// crash between keeping a result and sending it leaves on disk.
const [path, sent, unsent] = process.argv.slice(2) as [string, string, string]
const journal = openJournal(path, "p1")
const result = (ticket: string) => ({
  ticket,
  result: `out ${ticket}\n`,
  exit_code: 0,
  status: "succeeded" as const,
})
await Effect.runPromise(
  Effect.gen(function* () {
    yield* journal.started("running")
    for (const ticket of sent.split(",")) {
      yield* journal.started(ticket)
      yield* journal.finished(result(ticket))
      journal.sent(ticket)
    }
    // Kept, and the process dies before it is sent.
    yield* journal.started(unsent)
    yield* journal.finished(result(unsent))
  }),
)
process.stdout.write("kept\n")
// Killed while it waits.
process.stdin.resume()
