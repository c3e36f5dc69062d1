import { Context, type Effect, Schema } from "effect"
import type { StoreError } from "./StoreError.ts"

/** A job of the catalog. */
export const CatalogJob = Schema.Struct({
  job_id: Schema.String,
  name: Schema.String,
  os: Schema.String,
  distro: Schema.String,
  command: Schema.String,
  timeout_ms: Schema.Int,
})
export type CatalogJob = typeof CatalogJob.Type

/** A catalog job's `os` or `distro` that fits every peer, one that did not report its own too. */
export const ANY_PLATFORM = "any"

/**
 * Whether a job is for a peer: its os is the peer's or `any`, and so is its distro. A peer that did
 * not say its os (or distro) gets only the jobs marked `any` for it.
 */
export const jobFitsPeer = (
  job: { readonly os: string; readonly distro: string },
  peer: { readonly os: string | null; readonly distro: string | null },
): boolean =>
  (job.os === ANY_PLATFORM || job.os === peer.os) &&
  (job.distro === ANY_PLATFORM || job.distro === peer.distro)

/** The job catalog. */
export interface CatalogStoreService {
  /** Makes the catalog exactly `jobs`: upserts them and disables every other job. */
  readonly replaceCatalog: (jobs: ReadonlyArray<CatalogJob>) => Effect.Effect<void, StoreError>
  /** The enabled jobs that fit a peer of this os and distro (null: it did not say); see jobFitsPeer. */
  readonly jobsFor: (
    os: string | null,
    distro: string | null,
  ) => Effect.Effect<ReadonlyArray<CatalogJob>, StoreError>
}

export class CatalogStore extends Context.Service<CatalogStore, CatalogStoreService>()(
  "@picus/core/CatalogStore",
) {}
