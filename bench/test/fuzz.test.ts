import { describe, expect, it } from "vitest"
import { defaultOptions, describe as describeReport, runFuzz } from "../src/fuzz/run.ts"

const env = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}

describe("hostile uplink entries (the short form of pnpm fuzz)", () => {
  it("5,000 of them leave the good peers' tickets each ended once with their own result, and the server serving", async () => {
    const report = await runFuzz(env, { ...defaultOptions, messages: 5_000, drainTimeoutMs: 30_000 })
    const summary = describeReport(report)
    expect(report.failures, summary).toEqual([])
    expect(report.serverAlive, summary).toBe(true)
    expect(report.messages).toBe(5_000)
    expect(report.ledger.open, summary).toEqual([])
    expect(report.ledger.wrongResult, summary).toEqual([])
    expect(report.ledger.states, summary).toEqual({ succeeded: report.ledger.tickets })
    expect(report.ledger.afterFloodState, summary).toBe("succeeded")
    // Forged results wrote nothing: every result row added is a good ticket's.
    expect(report.rowsAdded.job_results ?? 0).toBeLessThanOrEqual(report.goodTickets)
    // Sessions come only from the valid registrations (and the good peers re-registering).
    expect(report.rowsAdded.sessions ?? 0).toBeLessThanOrEqual(report.validSent + 4 * 2)
    expect(report.deadLetters).toBe(0)
  }, 180_000)
})
