import { assert, describe, it } from "@effect/vitest"
import { AskTimeout, LeaseLost, MailboxFull, StoreError, TransportError } from "@picus/core"
import { Cause } from "effect"
import { judge } from "../src/gateway/Poison.ts"

// How a failed uplink entry is judged: by the error's type and kind, never its text.

const store = (kind: "unavailable" | "rejected" | "unknown") =>
  Cause.fail(new StoreError({ operation: "recordResults", message: "text that says nothing", kind }))

describe("judging a failed uplink entry", () => {
  it("waits out a passing failure however often it happens", () => {
    for (const cause of [
      store("unavailable"),
      Cause.fail(new TransportError({ operation: "xadd", message: "connection lost" })),
      Cause.fail(new MailboxFull({ sessionId: "s" })),
      Cause.fail(new AskTimeout({ sessionId: "s", command: "Result" })),
    ]) {
      assert.deepStrictEqual(judge(cause, 100, 5), { _tag: "wait" })
    }
  })

  it("sets aside at once what the database refuses, with its message", () => {
    const decision = judge(store("rejected"), 1, 5)
    assert.strictEqual(decision._tag, "deadLetter")
    assert.include(decision._tag === "deadLetter" ? decision.reason : "", "text that says nothing")
  })

  it("retries any other failure up to the most attempts, then sets it aside", () => {
    for (const cause of [
      store("unknown"),
      Cause.fail(new LeaseLost({ sessionId: "s", epoch: 1 })),
      Cause.die(new Error("a bug")),
    ]) {
      assert.deepStrictEqual(judge(cause, 4, 5), { _tag: "retry" })
      const last = judge(cause, 5, 5)
      assert.strictEqual(last._tag, "deadLetter")
      assert.include(last._tag === "deadLetter" ? last.reason : "", "failed 5 times")
    }
  })

  it("does not read the message: a refusal worded like an outage is still a refusal", () => {
    const worded = Cause.fail(
      new StoreError({ operation: "x", message: "connection refused (ECONNREFUSED)", kind: "rejected" }),
    )
    assert.strictEqual(judge(worded, 1, 5)._tag, "deadLetter")
  })
})
