import { fileURLToPath } from "node:url"
import { Protocol, type ResultRow, type SessionRow } from "@picus/core"
import { defaultDataDir } from "server"
import { describe, expect, it } from "vitest"
import { makeLiveView, renderFeedPayload } from "../src/liveView.ts"
import { summarize } from "../src/summary.ts"

describe("make dev's data folder", () => {
  // `make sessions` and `make results` read the folder `make dev` writes: both take the server's.
  it("is .data at the repository root", () => {
    expect(defaultDataDir).toBe(fileURLToPath(new URL("../../../.data", import.meta.url)))
  })
})

describe("live view", () => {
  const render = makeLiveView({ color: false })
  const at = Date.UTC(2025, 0, 2, 3, 4, 5)

  it("renders a feed event as one plain line", () => {
    const payload = Protocol.encodeFeedEvent({
      event: "result",
      at,
      server_id: "dev-server",
      peer_id: "peer-1",
      ticket: "t-1",
      name: "disk",
      status: "succeeded",
      exit_code: 0,
      first_line: "Filesystem  Size\n",
    })
    expect(renderFeedPayload(render, payload)).toBe(
      `03:04:05  ${"peer-1".padEnd(14)}  ${"result".padEnd(10)}  #t-1 disk: succeeded exit 0  Filesystem  Size`,
    )
  })

  it("skips what is not a feed event", () => {
    expect(renderFeedPayload(render, '{"event":"unknown"}')).toBeUndefined()
    expect(renderFeedPayload(render, "not json")).toBeUndefined()
  })
})

describe("summary", () => {
  const session = (peerId: string, durationMs: number, logoutReason: string | null): SessionRow => ({
    peerId,
    sessionId: `s-${peerId}`,
    loginAt: 0,
    logoutAt: logoutReason === null ? null : durationMs,
    durationMs,
    logoutReason,
    serverId: "dev-server",
  })
  const result = (ticket: string, status: ResultRow["status"]): ResultRow => ({
    ticket,
    peerId: "peer-1",
    jobName: "disk",
    status,
    exitCode: status === "succeeded" ? 0 : 1,
    output: "",
    truncated: false,
    receivedAt: 0,
  })

  it("lists each session with its duration and the results by status", () => {
    const text = summarize(
      [session("peer-1", 12_340, "server_shutdown"), session("peer-2", 500, null)],
      [result("a", "succeeded"), result("b", "failed"), result("c", "succeeded")],
    )
    expect(text.split("\n")).toEqual([
      "",
      "Summary",
      "  sessions:",
      `    ${"peer-1".padEnd(14)}    12.3s  server_shutdown`,
      `    ${"peer-2".padEnd(14)}     0.5s  still logged in`,
      "  results: 3 (1 failed, 2 succeeded)",
    ])
  })

  it("says when there was nothing", () => {
    expect(summarize([], [])).toBe("\nSummary\n  sessions:\n    (none)\n  results: 0")
  })
})
