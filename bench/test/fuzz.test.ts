import { Protocol } from "@picus/core"
import { describe, expect, it } from "vitest"
import { defaultOptions, describe as describeReport, runFuzz } from "../src/fuzz/run.ts"

const env = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}

describe("hostile uplink entries (the short form of pnpm fuzz)", () => {
  it("5,000 of them leave the good peers' tickets each ended once with their own result, the signed peers' sessions whole, and the server serving", async () => {
    const report = await runFuzz(env, { ...defaultOptions, messages: 5_000, drainTimeoutMs: 30_000 })
    const summary = describeReport(report)
    expect(report.failures, summary).toEqual([])
    expect(report.serverAlive, summary).toBe(true)
    expect(report.messages).toBe(5_000)
    // The kinds aimed at the signed peers were all sent.
    for (const kind of [
      "wrong_identity",
      "replayed_signed",
      "skewed_ts",
      "bad_mac",
      "garbage_sig",
      "oversized",
    ])
      expect(report.byKind[kind] ?? 0, `${kind}\n${summary}`).toBeGreaterThan(0)
    expect(report.ledger.open, summary).toEqual([])
    expect(report.ledger.wrongResult, summary).toEqual([])
    expect(report.ledger.states, summary).toEqual({ succeeded: report.ledger.tickets })
    expect(report.ledger.afterFloodState, summary).toBe("succeeded")
    // The signed peers worked through the flood in the sessions they opened before it.
    expect(report.ledger.signed.length).toBe(defaultOptions.signedPeers)
    for (const p of report.ledger.signed) {
      expect(p.openAtEnd, summary).toBe(p.sessionId)
      expect(p.keyKept, summary).toBe(true)
      expect(p.counts.jobs, summary).toBeGreaterThan(0)
    }
    // Forged results wrote nothing: every result row added is a good ticket's.
    expect(report.rowsAdded.job_results ?? 0).toBeLessThanOrEqual(report.goodTickets)
    // Sessions come only from the valid registrations (and the good peers re-registering).
    expect(report.rowsAdded.sessions ?? 0).toBeLessThanOrEqual(report.validSent + 4 * 2)
    // Forgeries for the bound ids were refused as such; the refusals beyond the log's rate counted.
    const refused = report.registrationLog.refusedByReason
    expect(refused[Protocol.RejectReason.wrongIdentity] ?? 0, summary).toBeGreaterThan(0)
    expect(refused[Protocol.RejectReason.replayed] ?? 0, summary).toBeGreaterThan(0)
    expect(report.registrationLog.repeats, summary).toBeGreaterThan(report.registrationLog.rows)
    // Oversized entries never reached the server: the intake dropped them.
    expect(report.intakeDropped).toBe(report.byKind.oversized)
    expect(report.deadLetters).toBe(0)
  }, 120_000)

  it("fails its ledger when a signed peer's key has leaked (a registration signed with it replaces the session)", async () => {
    const report = await runFuzz(env, {
      ...defaultOptions,
      messages: 1_000,
      drainTimeoutMs: 30_000,
      logSettleMs: 0,
      // The replaced peer's tickets go to a session nobody reads: they will not end.
      settleMs: 3_000,
      plantLeakedKey: true,
    })
    const summary = describeReport(report)
    const replaced = report.ledger.signed[0]!
    expect(replaced.openAtEnd, summary).toBeDefined()
    expect(replaced.openAtEnd, summary).not.toBe(replaced.sessionId)
    expect(report.failures.join("\n"), summary).toContain(`signed peer ${replaced.peerId}: its session`)
    // The other one, never forged for with its real key, kept its session.
    expect(report.ledger.signed[1]!.openAtEnd, summary).toBe(report.ledger.signed[1]!.sessionId)
  }, 120_000)
})
