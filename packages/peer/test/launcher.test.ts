import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { execute } from "../src/executor.ts"
import { type Launcher, makeLauncher } from "../src/launcher.ts"

const options = { timeoutMs: 10_000, outputCapBytes: 64 * 1024 }

/** A launcher ready for jobs, closed with the test. */
const readyLauncher = (launchers: number) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const launcher = makeLauncher({ launchers })
      assert.isTrue(await launcher.ready(), "a launcher is ready")
      return launcher
    }),
    (launcher) => Effect.sync(() => launcher.close()),
  )

/** The pid of the shell's parent, as the command itself saw it. */
const parentOf = (output: string) => Number(/ppid=(\d+)/.exec(output)?.[1])

const run = (command: string, launcher: Launcher) => execute(command, { ...options, launcher })

describe("launcher", () => {
  it.live("with no setsid command: none is ready, told once why, and jobs are spawned by the peer", () =>
    Effect.gen(function* () {
      const told: Array<string> = []
      const launcher = makeLauncher({
        launchers: 2,
        setsid: "/no/such/setsid",
        onUnavailable: (r) => told.push(r),
      })
      assert.isFalse(yield* Effect.promise(() => launcher.ready()))
      const first = yield* run("echo ppid=$PPID", launcher)
      const second = yield* run("echo ppid=$PPID", launcher)
      assert.deepStrictEqual([parentOf(first.output), parentOf(second.output)], [process.pid, process.pid])
      assert.deepStrictEqual(told, ["no /no/such/setsid command"])
      launcher.close()
    }),
  )

  it.live("more jobs at once than launchers: the others are spawned by the peer, every result its own", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const launcher = yield* readyLauncher(2)
        const runs = yield* Effect.all(
          Array.from({ length: 6 }, (_, i) => run(`sleep 0.3; echo "job=${i} ppid=$PPID"`, launcher)),
          { concurrency: "unbounded" },
        )
        runs.forEach((r, i) => {
          assert.include(r.output, `job=${i} `)
          assert.strictEqual(r.exitCode, 0)
        })
        const launched = runs.filter((r) => parentOf(r.output) !== process.pid).length
        assert.isAtLeast(launched, 1)
        assert.isAtMost(launched, 2)
      }),
    ),
  )

  it.live(
    "a launcher killed while its job runs: the job ends with its output and no exit code; the next ones run",
    () =>
      Effect.scoped(
        Effect.gen(function* () {
          const launcher = yield* readyLauncher(1)
          const first = yield* run("echo ppid=$PPID", launcher)
          const launcherPid = parentOf(first.output)
          assert.notStrictEqual(launcherPid, process.pid)
          const fiber = yield* run("echo started; sleep 0.5; echo done", launcher).pipe(Effect.forkChild)
          yield* Effect.sleep("200 millis")
          process.kill(launcherPid, "SIGKILL")
          const orphan = yield* Fiber.join(fiber)
          assert.strictEqual(orphan.output, "started\ndone\n", "the job ran to its end in its own session")
          assert.isNull(orphan.exitCode, "nobody reaped it here")
          const next = yield* run("echo next", launcher)
          assert.strictEqual(next.output, "next\n")
          assert.strictEqual(next.exitCode, 0)
        }),
      ),
  )

  it.live("a command longer than a launcher carries is spawned by the peer", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const launcher = yield* readyLauncher(1)
        const long = yield* run(`: ${"x".repeat(5_000)}; echo ppid=$PPID`, launcher)
        assert.strictEqual(parentOf(long.output), process.pid)
        const short = yield* run("echo ppid=$PPID", launcher)
        assert.notStrictEqual(parentOf(short.output), process.pid)
      }),
    ),
  )

  it.live("a shell killed by a signal tells 128 + its number, as shells tell it", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const launcher = yield* readyLauncher(1)
        const killed = yield* run("kill -9 $$", launcher)
        assert.strictEqual(killed.exitCode, 137)
        assert.strictEqual(killed.output, "", "and no word of the launcher's in the job's output")
      }),
    ),
  )

  it.live("closed while a job runs: the job runs to its end and its result is told", () =>
    Effect.gen(function* () {
      const launcher = makeLauncher({ launchers: 1 })
      assert.isTrue(yield* Effect.promise(() => launcher.ready()))
      const fiber = yield* run("sleep 0.3; echo ppid=$PPID", launcher).pipe(Effect.forkChild)
      yield* Effect.sleep("100 millis")
      launcher.close()
      const last = yield* Fiber.join(fiber)
      assert.strictEqual(last.exitCode, 0)
      assert.notStrictEqual(parentOf(last.output), process.pid)
      const after = yield* run("echo ppid=$PPID", launcher)
      assert.strictEqual(parentOf(after.output), process.pid, "closed: the peer spawns")
    }),
  )
})
