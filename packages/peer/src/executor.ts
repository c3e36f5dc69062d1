import { Effect } from "effect"
import type { Launcher } from "./launcher.ts"

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
  /** Starts the default shell without a fork of the peer, where it can (see launcher.ts). */
  readonly launcher?: Launcher
}

/**
 * Runs a command with the shell, in a process group of its own so that a timeout, a cancel (or an
 * interruption) kills everything it started, not just the shell.
 */
/** A started shell, whichever way it was started. */
interface Started {
  /** Signals the whole process group. */
  readonly killGroup: (signal: NodeJS.Signals) => void
}

interface StartHandlers {
  readonly output: (stream: "stdout" | "stderr", chunk: Buffer) => void
  /** Both streams closed: the shell's exit code (null if a signal ended it), or why it never ran. */
  readonly exit: (code: number | null, failure?: string) => void
}

/** The shell spawned by the peer itself, detached: a session and process group of its own. */
const spawnShell = (shell: string, command: string, handlers: StartHandlers): Started => {
  // Loaded with the first job, not at start: an idle peer never needs node:child_process, and
  // loading it (with the dgram and stream modules it brings) costs the packaged peer about 1 MiB.
  const { spawn } = process.getBuiltinModule("node:child_process")
  const child = spawn(shell, ["-c", command], { detached: true, stdio: ["ignore", "pipe", "pipe"] })
  child.stdout.on("data", (chunk: Buffer) => handlers.output("stdout", chunk))
  child.stderr.on("data", (chunk: Buffer) => handlers.output("stderr", chunk))
  child.on("error", (error) => handlers.exit(null, `failed to start: ${error.message}`))
  child.on("close", (code) => handlers.exit(code))
  return {
    killGroup: (signal) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal)
      } catch {
        // Already gone.
      }
    },
  }
}

const DEFAULT_SHELL = "/bin/sh"

/**
 * Runs a command with the shell, in a process group of its own so that a timeout, a cancel (or an
 * interruption) kills everything it started, not just the shell. Through the launcher when one is
 * given and takes it (the default shell only), else spawned by the peer.
 */
export const execute = (command: string, options: ExecuteOptions): Effect.Effect<Execution> =>
  Effect.callback<Execution>((resume) => {
    const startedAt = Date.now()
    const chunks: Array<Buffer> = []
    let kept = 0
    let truncated = false
    let timedOut = false
    let cancelled = false
    let finished = false
    let graceTimer: ReturnType<typeof setTimeout> | undefined
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
    const output = (stream: "stdout" | "stderr", chunk: Buffer) => {
      onOutput?.(stream, chunk)
      collect(chunk)
    }
    const done = (exitCode: number | null, extra?: string) => {
      if (finished) return
      finished = true
      clearTimeout(timer)
      if (graceTimer !== undefined) clearTimeout(graceTimer)
      options.cancel?.removeEventListener("abort", onCancel)
      // Whatever the shell left running in its group goes with it.
      if (cancelled) started.killGroup("SIGKILL")
      // The wire carries no U+0000 (PostgreSQL text cannot hold it): a NUL byte reads as U+FFFD,
      // as an invalid byte does.
      let text = Buffer.concat(chunks).toString("utf8").replaceAll("\u0000", "\uFFFD")
      // A cut may split a multi-byte character; drop the replacement character it leaves.
      if (truncated) text = text.replace(/\uFFFD$/, "")
      if (extra) text += extra
      resume(
        Effect.succeed({
          exitCode,
          output: text,
          truncated,
          timedOut,
          cancelled,
          startedAt,
          finishedAt: Date.now(),
        }),
      )
    }
    const exit = (code: number | null, failure?: string) =>
      failure === undefined ? done(timedOut || cancelled ? null : code) : done(null, failure)
    const shell = options.shell ?? DEFAULT_SHELL
    const launched = shell === DEFAULT_SHELL ? options.launcher?.launch(command, { output, exit }) : undefined
    const started: Started =
      launched === undefined ? spawnShell(shell, command, { output, exit }) : { killGroup: launched.kill }
    // The group, not the shell: `sleep 30 & sleep 30` leaves nothing behind. SIGTERM first, so a
    // command may clean up; whatever is left after the grace is killed.
    const onCancel = () => {
      if (cancelled || timedOut || finished) return
      cancelled = true
      started.killGroup("SIGTERM")
      graceTimer = setTimeout(() => started.killGroup("SIGKILL"), options.killGraceMs ?? 2_000)
    }
    if (options.cancel?.aborted) onCancel()
    else options.cancel?.addEventListener("abort", onCancel, { once: true })
    const timer = setTimeout(() => {
      timedOut = true
      started.killGroup("SIGKILL")
    }, options.timeoutMs)
    return Effect.sync(() => {
      clearTimeout(timer)
      if (graceTimer !== undefined) clearTimeout(graceTimer)
      started.killGroup("SIGKILL")
    })
  })
