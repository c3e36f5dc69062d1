/** What the operator's commands share. */
import { runCommand } from "@picus/core"
import type { Effect } from "effect"
import { isUsageError } from "server"

/** Runs a command's effect and exits with its outcome (2 for a usage mistake, see runCommand). */
export const run = (effect: Effect.Effect<unknown, unknown>): void => runCommand(effect, isUsageError)
