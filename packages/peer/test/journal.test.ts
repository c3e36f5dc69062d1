import { spawn } from "node:child_process"
import { existsSync, mkdtempSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { openJournal, withoutSqliteWarning } from "../src/journal.ts"
import { keptResult } from "./support/keptResult.ts"

const freshPath = () => join(mkdtempSync(join(tmpdir(), "picus-journal-")), "journal.db")

const result = keptResult

/** What another connection sees: only what was committed. */
const onDisk = (path: string) => {
  const db = new DatabaseSync(path, { readOnly: true })
  try {
    const rows = db.prepare("select ticket, sent from results order by seq").all() as Array<{
      ticket: string
      sent: number
    }>
    const started = db.prepare("select ticket from started order by seq").all() as Array<{ ticket: string }>
    return {
      results: rows.map((r) => r.ticket),
      pending: rows.filter((r) => r.sent === 0).map((r) => r.ticket),
      started: started.map((r) => r.ticket),
    }
  } finally {
    db.close()
  }
}

/** Runs the journal in a child process, kills it (SIGKILL) once it says it kept its results. */
const crashAfter = (path: string, sent: ReadonlyArray<string>, unsent: string) =>
  Effect.callback<void, Error>((resume) => {
    const child = spawn(
      process.execPath,
      [join(import.meta.dirname, "support", "journalCrash.ts"), path, sent.join(","), unsent],
      { stdio: ["pipe", "pipe", "pipe"] },
    )
    let output = ""
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes("kept\n")) child.kill("SIGKILL")
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (_code, signal) =>
      resume(
        signal === "SIGKILL" && output.includes("kept\n")
          ? Effect.void
          : Effect.fail(new Error(`the journal's process ended on its own:\n${output}`)),
      ),
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

describe("journal", () => {
  it.effect("keeps started tickets and results, sent and pending, across a restart", () =>
    Effect.gen(function* () {
      const path = freshPath()
      const first = openJournal(path, "p1")
      yield* first.started("t1")
      yield* first.finished(result("t1"))
      first.sent("t1")
      yield* first.started("t2")
      yield* first.finished({ ...result("t2", ""), exit_code: null, status: "timed_out", truncated: true })
      yield* first.started("t3") // started, never finished: no kept result
      first.close()

      const second = openJournal(path, "p1")
      assert.deepStrictEqual(second.kept("t1"), result("t1"))
      assert.deepStrictEqual(second.kept("t2"), {
        ...result("t2", ""),
        exit_code: null,
        status: "timed_out",
        truncated: true,
      })
      assert.isUndefined(second.kept("t3"))
      assert.isTrue(second.hasRun("t3"))
      assert.isFalse(second.hasRun("t4"))
      assert.deepStrictEqual(
        second.pending().map((r) => r.ticket),
        ["t2"],
      )
      second.sent("t2")
      assert.deepStrictEqual(second.pending(), [], "a result sent is no longer pending at once")
      second.close()
      const third = openJournal(path, "p1")
      assert.deepStrictEqual(third.pending(), [])
      assert.strictEqual(third.kept("t2")?.status, "timed_out", "a sent result stays kept")
      third.close()
    }),
  )

  it.effect("keeps what it wrote when the process is killed between keeping a result and sending it", () =>
    Effect.gen(function* () {
      const path = freshPath()
      yield* crashAfter(path, ["a", "b"], "c")
      const after = openJournal(path, "p1")
      assert.isTrue(after.hasRun("running"), "a ticket started, never finished, is known")
      assert.isUndefined(after.kept("running"))
      assert.deepStrictEqual(after.kept("c"), {
        ticket: "c",
        result: "out c\n",
        exit_code: 0,
        status: "succeeded",
      })
      assert.deepStrictEqual(
        after.pending().map((r) => r.ticket),
        ["c"],
        "the result kept and not sent is sent by the next run; the sent ones are not",
      )
      assert.isDefined(after.kept("a"))
      after.close()
    }),
  )

  it.effect("makes one commit and one fsync of the writes of one turn; none is done before", () =>
    Effect.gen(function* () {
      const path = freshPath()
      const journal = openJournal(path, "p1")
      const before = journal.stats()
      const tickets = ["1", "2", "3", "4", "5", "6"]
      yield* Effect.all(
        tickets.map((t) => journal.started(t).pipe(Effect.andThen(journal.finished(result(t))))),
        { concurrency: "unbounded" },
      )
      const after = journal.stats()
      assert.strictEqual(
        after.commits - before.commits,
        2,
        "the starts in one commit, the results in another",
      )
      assert.strictEqual(after.fsyncs - before.fsyncs, 2)
      assert.deepStrictEqual(onDisk(path).results, tickets)
      assert.deepStrictEqual(onDisk(path).pending, tickets)
      // A sent mark rides with the next group, or commits alone with no fsync.
      journal.sent("1")
      yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
      assert.strictEqual(journal.stats().fsyncs, after.fsyncs)
      assert.notInclude(onDisk(path).pending, "1")

      // Written in the open group, seen by the journal itself, but not committed yet.
      const waiting = Effect.runFork(journal.finished(result("7")))
      assert.isDefined(journal.kept("7"))
      assert.notInclude(onDisk(path).results, "7")
      yield* Fiber.await(waiting)
      assert.include(onDisk(path).results, "7")
      journal.close()
    }),
  )

  it.effect("drops the oldest sent results now and then, never one not yet sent", () =>
    Effect.gen(function* () {
      const path = freshPath()
      // Up to 4 kept, compacted once they are more than 5.
      const journal = openJournal(path, "p1", { keptResults: 4 })
      yield* journal.finished(result("pending-1"))
      const seen: Array<number> = []
      for (const t of ["a", "b", "c", "d", "e", "f", "g", "h"]) {
        yield* journal.started(t)
        yield* journal.finished(result(t))
        journal.sent(t)
        seen.push(onDisk(path).results.length)
      }
      assert.isAtMost(Math.max(...seen), 5)
      assert.include(seen, 5, "not compacted at every result")
      assert.deepStrictEqual(onDisk(path).pending.slice(0, 1), ["pending-1"])
      journal.close()

      const reopened = openJournal(path, "p1", { keptResults: 4 })
      assert.deepStrictEqual(
        ["pending-1", "a", "b", "c", "d", "e", "f", "g", "h"].filter((t) => reopened.kept(t) !== undefined),
        ["pending-1", "f", "g", "h"],
      )
      assert.deepStrictEqual(
        reopened.pending().map((r) => r.ticket),
        ["pending-1"],
      )
      assert.isTrue(reopened.hasRun("a"), "its output is gone, the ticket is still known as run")
      reopened.close()
    }),
  )

  it.effect("keeps outputs within a byte budget, and the last started tickets only", () =>
    Effect.gen(function* () {
      const path = freshPath()
      const small = openJournal(path, "p1", { keptOutputBytes: 10, rememberedTickets: 3 })
      yield* small.finished(result("x", "12345678"))
      small.sent("x")
      yield* small.finished(result("y", "12345678"))
      for (const t of ["t1", "t2", "t3", "t4", "t5"]) yield* small.started(t)
      small.close()
      const reopened = openJournal(path, "p1", { keptOutputBytes: 10, rememberedTickets: 3 })
      assert.isUndefined(reopened.kept("x"), "over the byte budget: the sent one goes")
      assert.isDefined(reopened.kept("y"), "the pending one stays, even over the budget")
      assert.deepStrictEqual(
        ["t1", "t2", "t3", "t4", "t5"].filter((t) => reopened.hasRun(t)),
        ["t3", "t4", "t5"],
      )
      reopened.close()
    }),
  )

  it.effect("forgets the tickets of another peer id", () =>
    Effect.gen(function* () {
      const path = freshPath()
      const first = openJournal(path, "p1")
      yield* first.started("t1")
      yield* first.finished(result("t1"))
      first.close()
      const other = openJournal(path, "p2")
      assert.isUndefined(other.kept("t1"))
      assert.isFalse(other.hasRun("t1"))
      assert.deepStrictEqual(other.pending(), [])
      other.close()
    }),
  )

  it.effect("is readable by its owner alone, with its WAL", () =>
    Effect.gen(function* () {
      const path = freshPath()
      const journal = openJournal(path, "p1")
      yield* journal.started("t1")
      for (const file of [path, `${path}-wal`, `${path}-shm`]) {
        assert.isTrue(existsSync(file), file)
        assert.strictEqual(statSync(file).mode & 0o777, 0o600, file)
      }
      journal.close()
    }),
  )

  it("keeps the experimental-SQLite warning out of the output, and no other warning", async () => {
    const seen: Array<string> = []
    const listener = (warning: Error) => seen.push(warning.message)
    const emitted = process.emitWarning
    // Only this listener hears them meanwhile (the default one would print them).
    const others = process.listeners("warning")
    process.removeAllListeners("warning")
    process.on("warning", listener)
    try {
      withoutSqliteWarning(() => {
        process.emitWarning(
          "SQLite is an experimental feature and might change at any time",
          "ExperimentalWarning",
        )
        process.emitWarning("something else", "ExperimentalWarning")
      })
      assert.strictEqual(process.emitWarning, emitted, "put back")
      process.emitWarning(
        "SQLite is an experimental feature and might change at any time",
        "ExperimentalWarning",
      )
      // Warnings are told on the next tick.
      await new Promise<void>((resolve) => process.nextTick(resolve))
      assert.deepStrictEqual(seen, [
        "something else",
        "SQLite is an experimental feature and might change at any time",
      ])
    } finally {
      process.off("warning", listener)
      for (const other of others) process.on("warning", other)
    }
  })
})
