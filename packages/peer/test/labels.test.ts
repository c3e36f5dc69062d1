import { assert, describe, it } from "@effect/vitest"
import { Protocol } from "@picus/core"
import { Result } from "effect"
import { parseLabels } from "../src/labels.ts"

describe("peer labels", () => {
  it("come from --label (repeatable), else from PICUS_LABELS", () => {
    assert.deepStrictEqual(
      parseLabels(["role=web", "zone=a=b"], "ignored=1"),
      Result.succeed({ role: "web", zone: "a=b" }),
    )
    assert.deepStrictEqual(parseLabels("role=db", undefined), Result.succeed({ role: "db" }))
    assert.deepStrictEqual(
      parseLabels(undefined, "role=web, zone=a"),
      Result.succeed({ role: "web", zone: "a" }),
    )
    assert.deepStrictEqual(parseLabels(undefined, undefined), Result.succeed({}))
  })

  it("a bad one is an error naming it and what to fix", () => {
    const failure = (r: Result.Result<unknown, string>) => (Result.isFailure(r) ? r.failure : "")
    assert.include(failure(parseLabels(["role"], undefined)), 'expected key=value, got "role"')
    assert.include(failure(parseLabels(["Role=web"], undefined)), "label key")
    assert.include(failure(parseLabels(undefined, "a=1,a=2")), "PICUS_LABELS: the label a is given twice")
    const many = Array.from({ length: 33 }, (_, i) => `k${i}=v`)
    assert.include(failure(parseLabels(many, undefined)), "at most 32 labels")
    assert.include(failure(parseLabels([`k=${"x".repeat(257)}`], undefined)), "at most 256 code points")
  })

  it("a register with labels decodes; one without is the brief's message", () => {
    const brief = { msg: "register", peer_id: "web-01", token: "enroll-3f9c2a", server_ip: "10.0.0.5" }
    assert.isTrue(Result.isSuccess(Protocol.decodePeerMessage(JSON.stringify(brief))))
    const labelled = Protocol.decodePeerMessage(
      JSON.stringify({ ...brief, labels: { role: "web", "k8s.io/zone": "a" } }),
    )
    assert.isTrue(Result.isSuccess(labelled))
    const bad = Protocol.decodePeerMessage(JSON.stringify({ ...brief, labels: { "Bad Key": "x" } }))
    assert.isTrue(Result.isFailure(bad))
    if (Result.isFailure(bad)) assert.include(bad.failure.message, "labels")
  })
})
