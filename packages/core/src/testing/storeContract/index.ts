import { layer } from "@effect/vitest"
import type { Layer } from "effect"
import type { Stores } from "../../store/Store.ts"
import { cancelContract } from "./cancel.ts"
import { catalogContract } from "./catalog.ts"
import { compositionContract } from "./composition.ts"
import { operatorTokenContract } from "./operatorTokens.ts"
import { reportContract } from "./reports.ts"
import { resultContract } from "./results.ts"
import { retentionContract } from "./retention.ts"
import { runContract } from "./runs.ts"
import { sessionContract } from "./sessions.ts"
import { ticketContract } from "./tickets.ts"
import { tokenContract } from "./tokens.ts"

export { loginOf, type StoreIt } from "./support.ts"
export {
  cancelContract,
  catalogContract,
  compositionContract,
  operatorTokenContract,
  reportContract,
  resultContract,
  retentionContract,
  runContract,
  sessionContract,
  ticketContract,
  tokenContract,
}

/**
 * The behaviour every store layer must have, domain by domain. Run by core against the in-memory
 * layer and by the server against PostgreSQL. Tests share one layer (one database), so each uses its
 * own peer ids.
 */
export const storeContract = (name: string, storeLayer: Layer.Layer<Stores, unknown>) =>
  layer(storeLayer, { timeout: 60_000 })(`Store contract (${name})`, (it) => {
    tokenContract(it)
    operatorTokenContract(it)
    catalogContract(it)
    reportContract(it)
    sessionContract(it)
    ticketContract(it)
    resultContract(it)
    runContract(it)
    cancelContract(it)
    compositionContract(it)
    // Last: it prunes what the others left behind.
    retentionContract(it)
  })
