import { describe, expect, it } from "vitest"
import { sameTurn } from "../src/db/sameTurn.ts"

/** A batcher over a fake database that records what it was sent. */
const recording = (
  send: (batch: ReadonlyArray<string>) => Promise<ReadonlyArray<string | undefined>> = async (batch) =>
    batch.map((input) => `batch:${input}`),
  maxBatch?: number,
) => {
  const sent: Array<ReadonlyArray<string>> = []
  const alone: Array<string> = []
  const call = sameTurn({
    keyOf: (input: string) => input.split("#")[0]!,
    groupOf: (input) => (input.startsWith("g2") ? "g2" : "g1"),
    ...(maxBatch === undefined ? {} : { maxBatch }),
    send: (batch) => {
      sent.push(batch)
      return send(batch)
    },
    alone: async (input) => {
      alone.push(input)
      return `alone:${input}`
    },
  })
  return { call, sent, alone }
}

describe("sameTurn", () => {
  it("sends the calls of one turn together; a call of the next turn goes in the next batch", async () => {
    const { call, sent } = recording()
    const first = await Promise.all(["a", "b", "c"].map(call))
    const second = await Promise.all(["d", "e"].map(call))
    expect(first).toEqual(["batch:a", "batch:b", "batch:c"])
    expect(second).toEqual(["batch:d", "batch:e"])
    expect(sent).toEqual([
      ["a", "b", "c"],
      ["d", "e"],
    ])
  })

  it("keeps calls of one key in separate batches, in order, and groups apart", async () => {
    const { call, sent, alone } = recording()
    const out = await Promise.all(["a#1", "b", "a#2", "g2x", "g2y", "a#3", "c", "b#2"].map(call))
    expect(out).toEqual([
      "batch:a#1",
      "batch:b",
      "batch:a#2",
      "batch:g2x",
      "batch:g2y",
      "alone:a#3",
      "batch:c",
      "batch:b#2",
    ])
    // The later calls of a key, and the calls of another group, wait for the batches after.
    expect(sent).toEqual([
      ["a#1", "b", "c"],
      ["a#2", "b#2"],
      ["g2x", "g2y"],
    ])
    expect(alone).toEqual(["a#3"])
  })

  it("sends at most maxBatch calls together; the rest go in the batches after", async () => {
    const { call, sent } = recording(undefined, 2)
    expect(await Promise.all(["a", "b", "c", "d", "e"].map(call))).toEqual([
      "batch:a",
      "batch:b",
      "batch:c",
      "batch:d",
      "alone:e",
    ])
    expect(sent).toEqual([
      ["a", "b"],
      ["c", "d"],
    ])
  })

  it("a call the batch leaves unanswered, or a failed batch, is sent alone", async () => {
    const partial = recording(async (batch) =>
      batch.map((input) => (input === "b" ? undefined : `batch:${input}`)),
    )
    expect(await Promise.all(["a", "b", "c"].map(partial.call))).toEqual(["batch:a", "alone:b", "batch:c"])
    const failing = recording(async () => {
      throw new Error("check constraint")
    })
    expect(await Promise.all(["a", "b"].map(failing.call))).toEqual(["alone:a", "alone:b"])
    expect(failing.alone).toEqual(["a", "b"])
  })

  it("without an alone of its own, a call is sent alone as a batch of one", async () => {
    const sent: Array<ReadonlyArray<string>> = []
    const call = sameTurn({
      keyOf: (input: string) => input,
      send: async (batch) => {
        sent.push(batch)
        if (batch.length > 1) throw new Error("check constraint")
        return batch.map((input) => (input === "b" ? undefined : `one:${input}`))
      },
    })
    const outcomes = await Promise.allSettled(["a", "b"].map(call))
    expect(outcomes.map((o) => (o.status === "fulfilled" ? o.value : "failed"))).toEqual(["one:a", "failed"])
    expect(sent).toEqual([["a", "b"], ["a"], ["b"]])
  })

  it("a batch that lost the database fails every call (written or not is unknown): none is sent again", async () => {
    const lost = recording(async () => {
      throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" })
    })
    const outcomes = await Promise.allSettled(["a", "b"].map(lost.call))
    expect(outcomes.map((o) => o.status)).toEqual(["rejected", "rejected"])
    expect(lost.alone).toEqual([])
  })
})
