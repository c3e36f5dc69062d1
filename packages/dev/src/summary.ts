import type { ResultRow, SessionRow } from "@picus/core"

/** The few lines printed when `make dev` stops: peers, how long each stayed, results by status. */
export const summarize = (sessions: ReadonlyArray<SessionRow>, results: ReadonlyArray<ResultRow>): string => {
  const lines = ["", "Summary", "  sessions:"]
  if (sessions.length === 0) lines.push("    (none)")
  for (const s of sessions) {
    lines.push(
      `    ${s.peerId.padEnd(14)} ${(s.durationMs / 1000).toFixed(1).padStart(7)}s  ${s.logoutReason ?? "still logged in"}`,
    )
  }
  const byStatus = new Map<string, number>()
  for (const r of results) byStatus.set(r.status, (byStatus.get(r.status) ?? 0) + 1)
  lines.push(
    `  results: ${results.length}${
      byStatus.size > 0
        ? ` (${[...byStatus]
            .sort()
            .map(([status, n]) => `${n} ${status}`)
            .join(", ")})`
        : ""
    }`,
  )
  return lines.join("\n")
}
