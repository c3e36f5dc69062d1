import { describe, expect, it } from "vitest"
import { Batcher } from "../src/batcher.ts"
import { median, percentile, percentiles, quantileSorted, spread } from "../src/stats.ts"

describe("percentile", () => {
  it("interpolates linearly between ranks (type 7)", () => {
    const xs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    expect(percentile(xs, 0)).toBe(1)
    expect(percentile(xs, 100)).toBe(10)
    expect(percentile(xs, 50)).toBe(5.5)
    expect(percentile(xs, 90)).toBeCloseTo(9.1, 10)
    expect(percentile(xs, 25)).toBeCloseTo(3.25, 10)
  })

  it("does not depend on input order and does not mutate it", () => {
    const xs = [9, 1, 8, 2, 7, 3]
    const copy = [...xs]
    expect(percentile(xs, 50)).toBe(
      percentile(
        [...xs].sort((a, b) => a - b),
        50,
      ),
    )
    expect(xs).toEqual(copy)
  })

  it("sorts numerically, not as strings", () => {
    expect(median([10, 9, 100])).toBe(10)
  })

  it("gives the only value for one sample and NaN for none", () => {
    expect(percentiles([42], [0, 50, 99, 100])).toEqual([42, 42, 42, 42])
    expect(percentile([], 50)).toBeNaN()
    expect(quantileSorted(new Float64Array(0), 0.5)).toBeNaN()
  })

  it("p99 of 1..1000 is 990.01", () => {
    const xs = Array.from({ length: 1000 }, (_, i) => i + 1)
    expect(percentile(xs, 99)).toBeCloseTo(990.01, 10)
  })
})

describe("spread", () => {
  it("reports median, range, quartiles and relative range", () => {
    const s = spread([100, 120, 80])
    expect(s).toMatchObject({ n: 3, median: 100, min: 80, max: 120, q1: 90, q3: 110 })
    expect(s.relRange).toBeCloseTo(0.4, 10)
  })
})

describe("Batcher", () => {
  it("writes a full batch at once and the rest after the delay, settling each caller after its write", async () => {
    const writes: number[][] = []
    const b = new Batcher<number>(
      async (rows) => {
        writes.push(rows)
      },
      3,
      5,
    )
    const first = [b.add(1), b.add(2), b.add(3)]
    const late = b.add(4)
    await Promise.all(first)
    expect(writes).toEqual([[1, 2, 3]])
    await late
    expect(writes).toEqual([[1, 2, 3], [4]])
  })

  it("rejects every caller of a failed batch", async () => {
    const b = new Batcher<number>(() => Promise.reject(new Error("down")), 10, 1)
    await expect(Promise.all([b.add(1), b.add(2)])).rejects.toThrow("down")
  })
})
