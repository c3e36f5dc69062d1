import { Schema } from "effect"

/**
 * How a store failure should be treated, judged from its cause (error class, SQLSTATE), never its text:
 * - `unavailable`: the database could not be reached or gave up for now (connection lost, shutting
 *   down, deadlock, timeout): the same write may succeed later, so retry it with a backoff;
 * - `rejected`: the database refused this input (a constraint, a value it cannot hold): retrying the
 *   same input fails the same way;
 * - `unknown`: neither could be told; retried a bounded number of times.
 */
export const StoreFailureKind = Schema.Literals(["unavailable", "rejected", "unknown"])
export type StoreFailureKind = typeof StoreFailureKind.Type

/** The database refused or could not be reached. */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  operation: Schema.String,
  message: Schema.String,
  kind: Schema.optionalKey(StoreFailureKind),
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/** The kind of a store failure (`unknown` when the store did not say). */
export const storeFailureKind = (error: StoreError): StoreFailureKind => error.kind ?? "unknown"
