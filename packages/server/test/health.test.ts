import { describe, expect, it } from "vitest"
import { parseHttpAddress } from "../src/http/address.ts"
import { readinessOf } from "../src/http/health.ts"

const healthy = {
  sessions: 3,
  retrying: 0,
  accepting: true,
  leaseRenewedAt: 10_000,
  lastReadAt: 14_000,
  lagMs: 0,
}
const limits = { leaseMs: 15_000, readWithinMs: 4_000 }

describe("readiness", () => {
  it("is ready with a fresh lease and a recent read", () => {
    expect(readinessOf(healthy, 15_000, limits)).toEqual({ ready: true, failing: [] })
  })
  it("says which part is not answering", () => {
    expect(readinessOf({ ...healthy, leaseRenewedAt: 10_000 }, 25_001, limits).failing).toEqual([
      "PostgreSQL: the instance's lease was not renewed within its lease",
      "Redis: the uplink was not read recently",
    ])
    expect(readinessOf({ ...healthy, lastReadAt: undefined }, 15_000, limits).failing).toEqual([
      "Redis: the uplink was not read recently",
    ])
    expect(readinessOf({ ...healthy, leaseRenewedAt: undefined }, 15_000, limits).ready).toBe(false)
    expect(readinessOf({ ...healthy, accepting: false }, 15_000, limits).failing).toEqual(["shutting down"])
  })
})

describe("--http addresses", () => {
  it("takes host:port, a bare port on loopback, and IPv6 in brackets", () => {
    expect(parseHttpAddress("0.0.0.0:8080")).toEqual({ host: "0.0.0.0", port: 8080 })
    expect(parseHttpAddress("8080")).toEqual({ host: "127.0.0.1", port: 8080 })
    expect(parseHttpAddress(":9")).toEqual({ host: "127.0.0.1", port: 9 })
    expect(parseHttpAddress("[::1]:8080")).toEqual({ host: "::1", port: 8080 })
  })
  it("refuses what is not an address", () => {
    for (const text of ["", "host", "host:", "1:2:3", "99999", "localhost:http"])
      expect(parseHttpAddress(text), text).toBeUndefined()
  })
})
