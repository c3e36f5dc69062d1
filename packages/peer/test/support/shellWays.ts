import { afterAll } from "vitest"
import { type Launcher, makeLauncher } from "../../src/launcher.ts"

/**
 * The two ways a job's shell is started: by the peer itself, and through a launcher (ready
 * before the first job, so that the tests run through it and not around it).
 */
export interface ShellWay {
  readonly name: string
  readonly launcher: () => Promise<Launcher | undefined>
}

let shared: Launcher | undefined
afterAll(() => shared?.close())

export const shellWays: ReadonlyArray<ShellWay> = [
  { name: "spawned by the peer", launcher: async () => undefined },
  {
    name: "through a launcher",
    launcher: async () => {
      shared ??= makeLauncher({ launchers: 4 })
      if (!(await shared.ready()))
        throw new Error("no launcher on this machine: setsid and mkfifo are needed")
      return shared
    },
  },
]
