import { Effect, Layer } from "effect"
import { makeMemoryCatalog } from "./memory/catalog.ts"
import { makeMemoryReports } from "./memory/reports.ts"
import { makeMemoryResults } from "./memory/results.ts"
import { makeMemoryRetention } from "./memory/retention.ts"
import { makeMemoryRuns } from "./memory/runs.ts"
import { makeMemorySessions } from "./memory/sessions.ts"
import { makeMemoryState } from "./memory/state.ts"
import { makeMemoryTickets } from "./memory/tickets.ts"
import { makeMemoryTokens } from "./memory/tokens.ts"
import { composeStore, type StoreParts, type Stores, storesContext } from "./Store.ts"

/**
 * The store kept in process memory, with the same rules as the PostgreSQL one (the contract suite
 * runs against both), one part per domain over one shared state. Used by fast tests; it keeps
 * nothing across restarts.
 */
export const makeMemoryStores = Effect.sync((): StoreParts => {
  const memory = makeMemoryState()
  return {
    tokens: makeMemoryTokens(memory),
    catalog: makeMemoryCatalog(memory),
    sessions: makeMemorySessions(memory),
    tickets: makeMemoryTickets(memory),
    results: makeMemoryResults(memory),
    reports: makeMemoryReports(memory),
    retention: makeMemoryRetention(memory),
    runs: makeMemoryRuns(memory),
  }
})

/** The whole Store in memory. */
export const makeMemoryStore = Effect.map(makeMemoryStores, composeStore)

/** The Store and every narrow store, in memory. */
export const layerMemory: Layer.Layer<Stores> = Layer.effectContext(
  Effect.map(makeMemoryStores, storesContext),
)
