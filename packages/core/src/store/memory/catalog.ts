import { Effect } from "effect"
import { CatalogStore, type CatalogStoreService, jobFitsPeer } from "../CatalogStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryCatalog = (memory: MemoryState): CatalogStoreService => {
  const { catalog } = memory
  return CatalogStore.of({
    replaceCatalog: (jobs) =>
      Effect.sync(() => {
        for (const job of catalog.values()) job.enabled = false
        for (const job of jobs) catalog.set(job.job_id, { ...job, enabled: true })
      }),
    jobsFor: (os, distro) =>
      Effect.sync(() =>
        [...catalog.values()]
          .filter((j) => j.enabled && jobFitsPeer(j, { os, distro }))
          .map(({ enabled: _enabled, ...job }) => job),
      ),
  })
}
