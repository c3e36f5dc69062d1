/**
 * `picus run` alone, for when it goes through a server's HTTP API (PICUS_API_URL): main.ts starts
 * this instead of the whole operator's program, which loads the stores and Redis for its other
 * commands. Same flags as the whole program's `run` (runView.ts), same behaviour (api/run.ts).
 */
import { cac } from "cac"
import { apiUrlOf, type RunFlags, runOptions } from "./commands/runView.ts"

export const apiRunProgram = (name: string) => {
  const cli = cac(name)
  runOptions(
    cli.command("run [...words]", "Run a command on many peers: picus run [target] -- <command>"),
  ).action(async (words: ReadonlyArray<string>, flags: RunFlags) => {
    const url = apiUrlOf(flags)
    if (url === undefined) throw new Error("apiRunProgram: no API URL")
    return (await import("./api/run.ts")).runViaApi(flags, words.map(String), url)
  })
  return cli
}
