import { type ChildProcess, spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"

export const repoRoot: string = fileURLToPath(new URL("../..", import.meta.url))

export interface Running {
  readonly name: string
  readonly child: ChildProcess
  /** Every line printed so far, stdout and stderr. */
  readonly lines: Array<string>
  readonly waitForLine: (pattern: RegExp, timeoutMs?: number) => Promise<string>
  /** Resolves with the exit code (or the signal's name). */
  readonly exited: Promise<number | string>
  /** Signals the whole process group, as a terminal's Ctrl+C does. */
  readonly signalGroup: (signal: NodeJS.Signals) => void
  readonly output: () => string
}

const started: Array<Running> = []

/**
 * Starts `pnpm <args>` at the repository root in a process group of its own, the way a user
 * starts the server or a peer.
 */
export const startPnpm = (name: string, args: ReadonlyArray<string>, env: Record<string, string>): Running =>
  startProcess(name, "pnpm", args, env)

/** Starts `node <script> <args>` the same way, without pnpm in between (lighter, for many peers). */
export const startNode = (
  name: string,
  script: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
): Running => startProcess(name, process.execPath, [script, ...args], env)

/**
 * Starts any program the same way (a client that shares no code with the project, say).
 * `isolated`: in `cwd`, with `env` alone (not this process's), as on a machine without the repository,
 * and as another user if given (`uid`, `gid`; needs root).
 */
export const startProcess = (
  name: string,
  command: string,
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  isolated?: { readonly cwd: string; readonly uid?: number; readonly gid?: number },
): Running => {
  const child = spawn(command, [...args], {
    cwd: isolated?.cwd ?? repoRoot,
    detached: true,
    env: isolated === undefined ? { ...process.env, ...env, FORCE_COLOR: "0" } : env,
    ...(isolated?.uid === undefined ? {} : { uid: isolated.uid }),
    ...(isolated?.gid === undefined ? {} : { gid: isolated.gid }),
    stdio: ["ignore", "pipe", "pipe"],
  })
  const lines: Array<string> = []
  const watchers = new Set<() => void>()
  for (const stream of [child.stdout, child.stderr]) {
    let partial = ""
    stream?.on("data", (chunk: Buffer) => {
      const parts = (partial + chunk.toString("utf8")).split("\n")
      partial = parts.pop() ?? ""
      lines.push(...parts)
      for (const w of watchers) w()
    })
    // A last line without its newline.
    stream?.on("end", () => {
      if (partial !== "") lines.push(partial)
      partial = ""
    })
  }
  let finished = false
  const exited = new Promise<number | string>((resolve) => {
    // A program that cannot start (not found, not executable) says so among its lines.
    child.on("error", (error) => {
      lines.push(`${name}: ${error.message}`)
      resolve(error.message)
    })
    // "exit" can come before the last of the output is read: the exit code is told once the pipes
    // are drained ("close"), or shortly after the exit if a descendant still holds them open.
    const done = (code: number | null, signal: NodeJS.Signals | null) => {
      finished = true
      for (const w of watchers) w()
      resolve(code ?? signal ?? "unknown")
    }
    child.on("exit", (code, signal) => {
      setTimeout(() => done(code, signal), 2_000).unref()
    })
    child.on("close", done)
  })
  const running: Running = {
    name,
    child,
    lines,
    exited,
    output: () => lines.join("\n"),
    signalGroup: (signal) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, signal)
      } catch {
        // Already gone.
      }
    },
    waitForLine: (pattern, timeoutMs = 30_000) =>
      new Promise<string>((resolve, reject) => {
        const check = () => {
          const found = lines.find((l) => pattern.test(l))
          if (found !== undefined) {
            cleanup()
            resolve(found)
          } else if (finished) {
            cleanup()
            reject(new Error(`${name} exited before printing ${pattern}:\n${lines.join("\n")}`))
          }
        }
        const timer = setTimeout(() => {
          cleanup()
          reject(new Error(`${name} did not print ${pattern} within ${timeoutMs} ms:\n${lines.join("\n")}`))
        }, timeoutMs)
        const cleanup = () => {
          clearTimeout(timer)
          watchers.delete(check)
        }
        watchers.add(check)
        check()
      }),
  }
  started.push(running)
  return running
}

/** Kills whatever a test left running (SIGKILL to each process group). */
export const killAll = async (): Promise<void> => {
  for (const r of started.splice(0)) {
    if (r.child.exitCode === null && r.child.signalCode === null) {
      r.signalGroup("SIGKILL")
      await r.exited
    }
  }
}

/** Runs `pnpm <args>` to completion and returns its exit code and output. */
export const runPnpm = async (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
): Promise<{ code: number | string; stdout: string; output: string }> => {
  const r = startPnpm(args.join(" "), args, env)
  const code = await r.exited
  const stdout = r.lines.filter((l) => !l.startsWith("$ ") && !l.startsWith(">")).join("\n")
  return { code, stdout, output: r.output() }
}

/** Starts `./picus <args>` the way an operator types it. */
export const startPicus = (name: string, args: ReadonlyArray<string>, env: Record<string, string>): Running =>
  startProcess(name, `${repoRoot}picus`, args, env)

/** Runs `./picus <args>` to completion: its own exit code, stdout alone, and all its output. */
export const runPicus = async (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
): Promise<{ code: number | string; stdout: string; output: string }> => {
  const r = startPicus(`picus ${args.join(" ")}`, args, env)
  const out: Array<string> = []
  r.child.stdout?.on("data", (chunk: Buffer) => out.push(chunk.toString("utf8")))
  const code = await r.exited
  return { code, stdout: out.join("").trimEnd(), output: r.output() }
}

/**
 * An admin operator token, and the environment of a command that reaches nothing but the server's
 * API at `port`: PostgreSQL and Redis settings that lead nowhere.
 */
export const viaApiOf = async (env: Record<string, string>, port: number) => {
  const created = await runPicus(
    ["operator-token", "create", "--name", "ops", "--scope", "admin", "--json"],
    env,
  )
  if (created.code !== 0) throw new Error(`operator-token create exited ${created.code}:\n${created.output}`)
  const { token } = JSON.parse(created.stdout) as { token: string }
  return {
    token,
    env: {
      ...env,
      DATABASE_URL: "postgres://postgres@127.0.0.1:1/nowhere",
      REDIS_URL: "redis://127.0.0.1:1",
      PICUS_API_URL: `http://127.0.0.1:${port}`,
      PICUS_API_TOKEN: token,
    },
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls until `check` returns a value, or fails after timeoutMs; `what` may be computed late. */
export const eventually = async <A>(
  what: string | (() => string),
  check: () => Promise<A | undefined>,
  timeoutMs = 30_000,
): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value !== undefined) return value
    } catch (error) {
      last = error
    }
    await sleep(100)
  }
  throw new Error(
    `timed out waiting for ${typeof what === "string" ? what : what()}${last ? `: ${String(last)}` : ""}`,
  )
}

/** Live `sleep <marker>` processes on this machine (the peer runs here). */
export const sleepsWith = (marker: string): number => {
  let count = 0
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const [program, argument] = readFileSync(`/proc/${entry}/cmdline`, "utf8").split("\u0000")
      const zombie = / Z /.test(readFileSync(`/proc/${entry}/stat`, "utf8").split(")").pop() ?? "")
      if (program?.endsWith("sleep") && argument === marker && !zombie) count++
    } catch {
      // Gone meanwhile.
    }
  }
  return count
}
