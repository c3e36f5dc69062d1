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
const serverOf = async () => (await import("server/program")).serverProgram("picus server")
const peerOf = async () => (await import("peer/program")).peerProgram("picus peer")
const elsewhere = async () => ({
  program: "picus",
  commands: (await operator()).commands.map((c) => c.name).filter((n) => n !== "server" && n !== "peer"),
})

// One config file may serve all three programs: each skips the keys of the others. Loaded only
// when there is a config file, so that a command without one starts with its own program alone.
const configGiven =
  process.argv.some((a) => a === "--config" || a.startsWith("--config=")) || !!process.env.PICUS_CONFIG
const siblings = configGiven ? await Promise.all([operator(), serverOf(), peerOf()]) : []

// `run` (not `run show`), `cancel` and the list of `peers` through a server's API: the program of
// those commands alone, which loads neither the stores nor Redis (a config file may name other
// programs' keys: the whole program).
const viaApi =
  ((first === "run" && rest[0] !== "show") ||
    first === "cancel" ||
    (first === "peers" && (rest[0] === undefined || rest[0] === "list" || rest[0].startsWith("-")))) &&
  !configGiven &&
  (!!process.env.PICUS_API_URL?.trim() || rest.some((a) => a === "--api-url" || a.startsWith("--api-url=")))

// An operator's command whose reader went away (`picus watch | head -1`) ends as a Unix tool killed
// by SIGPIPE does (128 + 13), instead of writing on into the void (Node ignores SIGPIPE, and its
// console drops the error). A server or a peer keeps serving without its log's reader.
if (first !== "server" && first !== "peer")
  process.stdout.on("error", (error: NodeJS.ErrnoException) => {
    if (error.code === "EPIPE") process.exit(141)
  })

if (viaApi) runProgram((await import("./apiProgram.ts")).apiRunProgram("picus"), process.argv)
else if (first === "server")
  runProgram(await serverOf(), argvOf(rest), { elsewhere: await elsewhere(), siblings })
else if (first === "peer")
  runProgram(await peerOf(), argvOf(rest), { elsewhere: await elsewhere(), siblings })
else runProgram(await operator(), process.argv, { siblings })
