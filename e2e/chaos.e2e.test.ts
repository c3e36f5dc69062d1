import { describe, expect, it } from "vitest"
import { formatLedgers, runScenario, scenarios } from "./chaos/scenarios.ts"

// The fault scenarios of `pnpm chaos`, small: 4 peers with 12 jobs each.

describe("chaos, in short", () => {
  it.each(Object.keys(scenarios))(
    "%s: nothing lost, nothing twice, every session closed",
    async (name) => {
      const ledger = await runScenario(name, { peers: 4, jobsPerPeer: 12 })
      console.log(formatLedgers([ledger]), JSON.stringify(ledger.byState), JSON.stringify(ledger.logouts))
      expect(ledger.lost).toBe(0)
      expect(ledger.duplicated).toBe(0)
      expect(ledger.openSessions).toBe(0)
      if (scenarios[name]!.keepsSessions) expect(ledger.tickets, "the first plan, and nothing more").toBe(48)
      else expect(ledger.tickets).toBeGreaterThanOrEqual(48)
    },
    240_000,
  )
})
