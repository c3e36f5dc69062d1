import { spawn } from "node:child_process"
import { Effect } from "effect"

export interface Execution {
  readonly exitCode: number | null
  /** stdout and stderr interleaved as they came, cut at the cap. */
  readonly output: string
  readonly truncated: boolean
  readonly timedOut: boolean
  readonly startedAt: number
  readonly finishedAt: number
}

export interface ExecuteOptions {
  readonly timeoutMs: number
  /** Most bytes of output kept; the rest is counted as truncated. */
  readonly outputCapBytes: number
  readonly shell?: string
}

/**
 * Runs a command with the shell, in a process group of its own so that a timeout (or an
 * interruption) kills everything it started, not just the shell.
 */
export const execute = (command: string, options: ExecuteOptions): Effect.Effect<Execution> =>
  Effect.callback<Execution>((resume) => {
    const startedAt = Date.now()
    const chunks: Array<Buffer> = []
    let kept = 0
    let truncated = false
    let timedOut = false
    const child = spawn(options.shell ?? "/bin/sh", ["-c", command], {
      detached: true,
      stdio: ["ignore", "pipe", "pipe"],
    })
    const killGroup = () => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL")
      } catch {
        // Already gone.
      }
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
    child.stdout.on("data", collect)
    child.stderr.on("data", collect)
    const timer = setTimeout(() => {
      timedOut = true
      killGroup()
    }, options.timeoutMs)
    const done = (exitCode: number | null, extra?: string) => {
      clearTimeout(timer)
      // The wire carries no U+0000 (PostgreSQL text cannot hold it): a NUL byte reads as U+FFFD,
      // as an invalid byte does.
      let output = Buffer.concat(chunks).toString("utf8").replaceAll("\u0000", "\uFFFD")
      // A cut may split a multi-byte character; drop the replacement character it leaves.
      if (truncated) output = output.replace(/\uFFFD$/, "")
      if (extra) output += extra
      resume(Effect.succeed({ exitCode, output, truncated, timedOut, startedAt, finishedAt: Date.now() }))
    }
    child.on("error", (error) => done(null, `failed to start: ${error.message}`))
    child.on("close", (code) => done(timedOut ? null : code))
    return Effect.sync(() => {
      clearTimeout(timer)
      killGroup()
    })
  })
