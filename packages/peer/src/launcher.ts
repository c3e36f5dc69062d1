import type { ChildProcess } from "node:child_process"
import { closeSync, constants, mkdtempSync, openSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Readable } from "node:stream"

/**
 * Starts jobs' shells from small long-lived `/bin/sh` processes instead of from the peer itself.
 * A fork copies the forking process's page tables and makes its pages copy-on-write: for a Node
 * peer (some 50 MiB of its own memory) that costs 2-3 ms of CPU per job, before and after the
 * exec; for a shell, a tenth of that. Each job still runs as `setsid /bin/sh -c <command>` (a
 * session and process group of its own, killed as one) with its stdin from /dev/null and its
 * stdout and stderr on pipes the peer reads as they come (two FIFOs per launcher).
 *
 * A launcher runs one job at a time in the foreground, so it is its parent: it reaps it and tells
 * its exit status (128 + n for a shell killed by signal n, as shells tell it). Where a launcher
 * cannot be had (no `setsid`, no FIFOs, every launcher busy, a command it cannot carry), `launch`
 * answers `undefined` and the caller spawns the shell itself.
 */

export interface LaunchHandlers {
  readonly output: (stream: "stdout" | "stderr", chunk: Buffer) => void
  /** Both streams ended and the job is over: its exit status (null when none could be told), or why it never ran. */
  readonly exit: (status: number | null, failure?: string) => void
}

export interface Launched {
  /** Signals the job's process group (at once, or as soon as the job has told its pid). */
  readonly kill: (signal: NodeJS.Signals) => void
}

export interface Launcher {
  readonly launch: (command: string, handlers: LaunchHandlers) => Launched | undefined
  /** Starts a launcher if none is up: true once one is ready for a job, false if none can be had here. */
  readonly ready: () => Promise<boolean>
  /** Ends every launcher (a job still running goes on, as a directly spawned one would). */
  readonly close: () => void
}

export interface LauncherOptions {
  /** Launchers at most: jobs beyond them (and any while one starts) are spawned directly. */
  readonly launchers: number
  /** Told once, when launchers turn out not to work here; jobs are then spawned directly. */
  readonly onUnavailable?: (reason: string) => void
  /** The command that gives a job its own session (default `setsid`, from util-linux or BusyBox). */
  readonly setsid?: string
}

/** Longer commands go the direct way: the shell's `read` takes a byte per system call. */
const MAX_COMMAND_BYTES = 4096

/**
 * The job's own shell: opens its FIFOs itself (a shell that redirects a command does it before the
 * fork and would write its own "Killed" into the job's output), tells its pid (its process
 * group's), closes the launcher's channel and runs the command as `sh -c` would ($0 the shell, no
 * positional parameters, no variable of ours).
 */
const JOB = `exec </dev/null >"$3" 2>"$4"; printf 's %s %s\\n' "$1" "$$" >&3; exec 3>&-; __picus_c=$2; shift 4; eval "unset __picus_c; $__picus_c"`

/**
 * The launcher: $1 its folder, $2 the job's shell, $3 the setsid command. Makes its FIFOs, says
 * `r`, then per request (`<id> <lines>` and that many lines of command) runs the job and says
 * `x <id> <status>`.
 */
const LAUNCHER = [
  'command -v "$3" >/dev/null 2>&1 || { echo "no $3 command" >&2; exit 3; }',
  'mkfifo "$1/o" "$1/e" || exit 4',
  "printf 'r\\n' >&3",
  // Ready: what it would say from now on (a job killed by a signal, say) is nobody's business.
  "exec 2>/dev/null",
  // A newline, to join the command's lines.
  'nl="',
  '"',
  "while IFS=' ' read -r id n; do",
  "  c= sep=",
  '  while [ "$n" -gt 0 ]; do IFS= read -r l || exit 0; c="$c$sep$l" sep=$nl n=$((n - 1)); done',
  '  "$3" /bin/sh -c "$2" /bin/sh "$id" "$c" "$1/o" "$1/e"',
  '  printf \'x %s %s\\n\' "$id" "$?" >&3',
  "done",
].join("\n")

interface Job {
  readonly id: number
  readonly handlers: LaunchHandlers
  readonly held: Array<number>
  pid?: number
  pendingKill?: NodeJS.Signals
  status?: number | null
  openStreams: number
  told: boolean
}

interface Slot {
  readonly dir: string
  readonly child: ChildProcess
  /** Told when it is ready (true) or ended before (false). */
  readonly waiters: Array<(ready: boolean) => void>
  ready: boolean
  gone: boolean
  job: Job | undefined
}

export const makeLauncher = (options: LauncherOptions): Launcher => {
  const slots: Array<Slot> = []
  let nextId = 1
  let unavailable = false
  let closed = false

  const giveUp = (reason: string) => {
    if (unavailable) return
    unavailable = true
    options.onUnavailable?.(reason)
  }

  const closeHeld = (job: Job) => {
    for (const fd of job.held.splice(0)) closeSync(fd)
  }

  const killGroup = (job: Job, signal: NodeJS.Signals) => {
    try {
      if (job.pid !== undefined) process.kill(-job.pid, signal)
    } catch {
      // Already gone.
    }
  }

  /** Tells the job's end once its streams are done and its status is known (or never will be). */
  const settle = (slot: Slot, job: Job) => {
    if (job.told || job.openStreams > 0 || job.status === undefined) return
    job.told = true
    closeHeld(job)
    if (slot.job === job) slot.job = undefined
    // No pid told: its shell never got as far as the command.
    if (job.pid === undefined)
      job.handlers.exit(null, `failed to start: the launcher's shell ended (${job.status})`)
    else job.handlers.exit(job.status)
  }

  const onEvent = (slot: Slot, line: string) => {
    const [kind, id, value] = line.split(" ")
    if (kind === "r") {
      slot.ready = true
      for (const told of slot.waiters.splice(0)) told(true)
      return
    }
    const job = slot.job
    if (job === undefined || String(job.id) !== id) return
    if (kind === "s") {
      job.pid = Number(value)
      // The job's shell holds the FIFOs now: their end is its end.
      closeHeld(job)
      if (job.pendingKill !== undefined) killGroup(job, job.pendingKill)
    } else if (kind === "x") {
      job.status = Number(value)
      closeHeld(job)
      settle(slot, job)
    }
  }

  const startSlot = (): Slot | undefined => {
    const { spawn } = process.getBuiltinModule("node:child_process")
    let dir: string
    try {
      dir = mkdtempSync(join(tmpdir(), "picus-launcher-"))
    } catch (error) {
      giveUp(`cannot make a folder for its pipes: ${error instanceof Error ? error.message : error}`)
      return undefined
    }
    const child = spawn("/bin/sh", ["-c", LAUNCHER, "picus-launcher", dir, JOB, options.setsid ?? "setsid"], {
      stdio: ["pipe", "ignore", "pipe", "pipe"],
    })
    const slot: Slot = { dir, child, waiters: [], ready: false, gone: false, job: undefined }
    slots.push(slot)
    let said = ""
    child.stderr?.on("data", (chunk: Buffer) => {
      said = (said + chunk.toString()).slice(-500)
    })
    let pending = ""
    const events = child.stdio[3] as Readable
    events.on("data", (chunk: Buffer) => {
      pending += chunk.toString()
      let end = pending.indexOf("\n")
      while (end >= 0) {
        onEvent(slot, pending.slice(0, end))
        pending = pending.slice(end + 1)
        end = pending.indexOf("\n")
      }
    })
    child.stdin?.on("error", () => {})
    child.on("error", (error) => giveUp(`cannot start /bin/sh: ${error.message}`))
    child.on("exit", () => {
      slot.gone = true
    })
    // After its exit and the end of its pipes: what it said last (a job's status) is read by then.
    child.on("close", (code) => {
      if (slots.includes(slot)) slots.splice(slots.indexOf(slot), 1)
      rmSync(dir, { recursive: true, force: true })
      if (!slot.ready && !closed) giveUp(said.trim() || `its shell exited (${code}) before it was ready`)
      for (const told of slot.waiters.splice(0)) told(false)
      // A job it was running goes on in its own session, unreaped here: its status is lost.
      const job = slot.job
      if (job !== undefined && job.status === undefined) {
        job.status = null
        closeHeld(job)
        settle(slot, job)
      }
    })
    return slot
  }

  const launch = (command: string, handlers: LaunchHandlers): Launched | undefined => {
    if (unavailable || closed || command.includes("\u0000")) return undefined
    if (Buffer.byteLength(command) > MAX_COMMAND_BYTES) return undefined
    const slot = slots.find((s) => s.ready && !s.gone && s.job === undefined)
    if (slot === undefined) {
      // Started for the jobs to come; this one goes the direct way.
      if (slots.length < options.launchers) startSlot()
      return undefined
    }
    const job: Job = { id: nextId++, handlers, held: [], openStreams: 2, told: false }
    const readers: Array<number> = []
    try {
      for (const name of ["o", "e"]) {
        const path = join(slot.dir, name)
        // Read end first (a FIFO opened for writing with no reader fails), then a write end held
        // until the job's shell has its own: a reader with no writer at all would see the end at once.
        readers.push(openSync(path, constants.O_RDONLY | constants.O_NONBLOCK))
        job.held.push(openSync(path, constants.O_WRONLY | constants.O_NONBLOCK))
      }
    } catch (error) {
      for (const fd of [...readers, ...job.held]) closeSync(fd)
      slot.child.stdin?.end()
      giveUp(`cannot open its pipes: ${error instanceof Error ? error.message : error}`)
      return undefined
    }
    slot.job = job
    const { Socket } = process.getBuiltinModule("node:net")
    for (const [i, stream] of (["stdout", "stderr"] as const).entries()) {
      const socket = new Socket({ fd: readers[i]!, readable: true, writable: false })
      socket.on("data", (chunk: Buffer) => handlers.output(stream, chunk))
      socket.on("error", () => socket.destroy())
      socket.once("close", () => {
        job.openStreams--
        settle(slot, job)
      })
    }
    const lines = command.split("\n")
    slot.child.stdin?.write(`${job.id} ${lines.length}\n${command}\n`)
    return {
      kill: (signal) => {
        if (job.pid === undefined) job.pendingKill = signal
        else killGroup(job, signal)
      },
    }
  }

  const ready = (): Promise<boolean> => {
    if (slots.some((s) => s.ready && !s.gone)) return Promise.resolve(true)
    const slot = unavailable || closed ? undefined : (slots.find((s) => !s.gone) ?? startSlot())
    if (slot === undefined) return Promise.resolve(false)
    return new Promise((resolve) => slot.waiters.push(resolve))
  }

  return {
    launch,
    ready,
    close: () => {
      closed = true
      for (const slot of slots) {
        slot.child.stdin?.end()
        // Its FIFOs stay open where a job still holds them.
        rmSync(slot.dir, { recursive: true, force: true })
      }
    },
  }
}
