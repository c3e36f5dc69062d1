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
const server = serverProgram("picus server")
const peer = peerProgram("picus peer")
// One config file may serve all three programs: each skips the keys of the others.
const siblings = [operator, server, peer]
const elsewhere = {
  program: "picus",
  commands: operator.commands.map((c) => c.name).filter((n) => n !== "server" && n !== "peer"),
}

if (first === "server") runProgram(server, argvOf(rest), { elsewhere, siblings })
else if (first === "peer") runProgram(peer, argvOf(rest), { elsewhere, siblings })
else runProgram(operator, process.argv, { siblings })
