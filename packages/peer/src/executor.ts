import { Effect } from "effect"

export interface Execution {
  readonly exitCode: number | null
  /** stdout and stderr interleaved as they came, cut at the cap. */
  readonly output: string
  readonly truncated: boolean
  readonly timedOut: boolean
  /** Stopped because `cancel` was signalled. */
  readonly cancelled: boolean
  readonly startedAt: number
  readonly finishedAt: number
}

export interface ExecuteOptions {
  readonly timeoutMs: number
  /** Most bytes of output kept; the rest is counted as truncated. */
  readonly outputCapBytes: number
  readonly shell?: string
  /** Each chunk of output as it comes, before the cap (for live output). */
  readonly onOutput?: (stream: "stdout" | "stderr", chunk: Buffer) => void
  /** Aborted: the whole process group gets SIGTERM, then SIGKILL after `killGraceMs`. */
  readonly cancel?: AbortSignal
  /** How long a cancelled command has to exit after SIGTERM (default 2 s). */
  readonly killGraceMs?: number
}

/**
 * Runs a command with the shell, in a process group of its own so that a timeout, a cancel (or an
 * interruption) kills everything it started, not just the shell.
 */
export const execute = (command: string, options: ExecuteOptions): Effect.Effect<Execution> =>
  Effect.callback<Execution>((resume) => {
    const startedAt = Date.now()
    const chunks: Array<Buffer> = []
    let kept = 0
    let truncated = false
    let timedOut = false
    let cancelled = false
    let graceTimer: ReturnType<typeof setTimeout> | undefined
    // Loaded with the first job, not at start: an idle peer never needs node:child_process, and
    // loading it (with the dgram and stream modules it brings) costs the packaged peer about 1 MiB.
    const { spawn } = process.getBuiltinModule("node:child_process")
    const child = spawn(options.shell ?? "/bin/sh", ["-c", command], {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    })
    const killGroup = (signal: NodeJS.Signals = "SIGKILL") => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal)
      } catch {
        // Already gone.
      }
    }
    // The group, not the shell: `sleep 30 & sleep 30` leaves nothing behind. SIGTERM first, so a
    // command may clean up; whatever is left after the grace is killed.
    const onCancel = () => {
      if (cancelled || timedOut) return
      cancelled = true
      killGroup("SIGTERM")
      graceTimer = setTimeout(() => killGroup("SIGKILL"), options.killGraceMs ?? 2_000)
    }
    const collect = (chunk: Buffer) => {
      const room = options.outputCapBytes - kept
      if (chunk.length > room) truncated = true
      if (room > 0) {
        const part = chunk.subarray(0, room)
        chunks.push(part)
        kept += part.length
      }
    }
    const onOutput = options.onOutput
    child.stdout.on("data", (chunk: Buffer) => {
      onOutput?.("stdout", chunk)
      collect(chunk)
    })
    child.stderr.on("data", (chunk: Buffer) => {
      onOutput?.("stderr", chunk)
      collect(chunk)
    })
    if (options.cancel?.aborted) onCancel()
    else options.cancel?.addEventListener("abort", onCancel, { once: true })
    const timer = setTimeout(() => {
      timedOut = true
      killGroup()
    }, options.timeoutMs)
    const done = (exitCode: number | null, extra?: string) => {
      clearTimeout(timer)
      if (graceTimer !== undefined) clearTimeout(graceTimer)
      options.cancel?.removeEventListener("abort", onCancel)
      // Whatever the shell left running in its group goes with it.
      if (cancelled) killGroup("SIGKILL")
      // The wire carries no U+0000 (PostgreSQL text cannot hold it): a NUL byte reads as U+FFFD,
      // as an invalid byte does.
      let output = Buffer.concat(chunks).toString("utf8").replaceAll("\u0000", "\uFFFD")
      // A cut may split a multi-byte character; drop the replacement character it leaves.
      if (truncated) output = output.replace(/\uFFFD$/, "")
      if (extra) output += extra
      resume(
        Effect.succeed({
          exitCode,
          output,
          truncated,
          timedOut,
          cancelled,
          startedAt,
          finishedAt: Date.now(),
        }),
      )
    }
    child.on("error", (error) => done(null, `failed to start: ${error.message}`))
    child.on("close", (code) => done(timedOut || cancelled ? null : code))
    return Effect.sync(() => {
      clearTimeout(timer)
      if (graceTimer !== undefined) clearTimeout(graceTimer)
      killGroup()
    })
  })
