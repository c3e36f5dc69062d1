#!/usr/bin/env node
// `pnpm --filter peer start`: one peer (the same as `./picus peer`).
import { runProgram } from "@picus/core"
import { peerProgram } from "./program.ts"

runProgram(peerProgram("picus-peer"), process.argv)
