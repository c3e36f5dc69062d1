import type { KeptResult } from "../../src/journal.ts"

/** A finished job's result as the peer keeps it, for ticket `ticket`. */
export const keptResult = (ticket: string, output = `out ${ticket}\n`): KeptResult => ({
  ticket,
  result: output,
  exit_code: 0,
  status: "succeeded",
  started_at: 1_767_225_600_000,
  finished_at: 1_767_225_600_420,
  truncated: false,
})
