#!/usr/bin/env node
/**
 * `./picus <command>`: the one entry point. `picus server` runs a server instance, `picus peer` a
 * peer; every other command is the operator's (tokens, runs, reports...). Each program answers
 * `--help` and `--version`, and refuses an unknown command or flag with exit code 2.
 */
import { runProgram } from "@picus/core"
import { peerProgram } from "peer"
import { serverProgram } from "server"
import { operatorProgram } from "./program.ts"

const [first, ...rest] = process.argv.slice(2)
const argvOf = (args: ReadonlyArray<string>) => [
  process.argv[0] ?? "node",
  process.argv[1] ?? "picus",
  ...args,
]
const operator = operatorProgram("picus")
const elsewhere = {
  program: "picus",
  commands: operator.commands.map((c) => c.name).filter((n) => n !== "server" && n !== "peer"),
}

if (first === "server") runProgram(serverProgram("picus server"), argvOf(rest), { elsewhere })
else if (first === "peer") runProgram(peerProgram("picus peer"), argvOf(rest), { elsewhere })
else runProgram(operator, process.argv)
