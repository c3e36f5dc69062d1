#!/usr/bin/env node
/**
 * `./picus <command>`: the one entry point. `picus server` runs a server instance, `picus peer` a
 * peer; every other command is the operator's (tokens, runs, reports...). Each program answers
 * `--help` and `--version`, and refuses an unknown command or flag with exit code 2. Each is loaded
 * only when asked for: an operator's command starts without the server's or the peer's modules.
 */
import { runProgram } from "@picus/core"

const [first, ...rest] = process.argv.slice(2)
const argvOf = (args: ReadonlyArray<string>) => [
  process.argv[0] ?? "node",
  process.argv[1] ?? "picus",
  ...args,
]
const operator = async () => (await import("./program.ts")).operatorProgram("picus")
const elsewhere = async () => ({
  program: "picus",
  commands: (await operator()).commands.map((c) => c.name).filter((n) => n !== "server" && n !== "peer"),
})

if (first === "server") {
  const { serverProgram } = await import("server/program")
  runProgram(serverProgram("picus server"), argvOf(rest), { elsewhere: await elsewhere() })
} else if (first === "peer") {
  const { peerProgram } = await import("peer/program")
  runProgram(peerProgram("picus peer"), argvOf(rest), { elsewhere: await elsewhere() })
} else runProgram(await operator(), process.argv)
