#!/usr/bin/env node
// `pnpm --filter server start`: a server instance. The operator's other commands are `./picus <command>`.
import { runProgram } from "@picus/core"
import { serverProgram } from "./program.ts"

runProgram(serverProgram("picus-server"), process.argv)
