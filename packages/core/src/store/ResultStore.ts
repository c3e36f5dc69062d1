import { Context, type Effect } from "effect"
import type { LeaseLost } from "../domain/lease.ts"
import type { ResultStatus } from "../domain/ticket.ts"
import type { StoreError } from "./StoreError.ts"

export interface NewResult {
  readonly ticket: string
  readonly peerId: string
  readonly sessionId: string
  /** The epoch the writer holds the session at. */
  readonly epoch: number
  readonly serverId: string
  readonly status: ResultStatus
  readonly exitCode: number | null
  readonly output: string
  readonly truncated: boolean
  readonly startedAt: number | null
  readonly finishedAt: number | null
}

/** The close_reason of a ticket its peer reported cancelled when no operator asked (never by this project's peer). */
export const CANCELLED_ON_PEER = "cancelled on its peer"

/**
 * What became of a result:
 * - recorded: written, and its ticket reached its terminal state;
 * - duplicate: the ticket already has a result (the first one stands);
 * - unknown_ticket: no such ticket;
 * - foreign_ticket: the ticket belongs to another peer or session;
 * - ticket_closed: the ticket already ended without a result (cancelled, undeliverable, timed out).
 */
export type RecordOutcome = "recorded" | "duplicate" | "unknown_ticket" | "foreign_ticket" | "ticket_closed"

/** Results: each written once, ending its ticket in the same transaction. */
export interface ResultStoreService {
  /**
   * Writes a result once and moves its ticket to its terminal state, in one transaction. Fails
   * with LeaseLost when the session is no longer held at the result's epoch.
   */
  readonly recordResult: (result: NewResult) => Effect.Effect<RecordOutcome, StoreError | LeaseLost>
  /**
   * Many results (of many sessions) at once, in one transaction: the outcome of each, in order;
   * `lease_lost` for those whose session is no longer held at their epoch (nothing written).
   */
  readonly recordResults: (
    results: ReadonlyArray<NewResult>,
  ) => Effect.Effect<ReadonlyArray<RecordOutcome | "lease_lost">, StoreError>
  /**
   * As recordResults, and which runs the recorded results' tickets belong to (each once), so their
   * rollout can go on. Tickets of no run cost nothing more.
   */
  readonly recordResultBatch: (results: ReadonlyArray<NewResult>) => Effect.Effect<
    {
      readonly outcomes: ReadonlyArray<RecordOutcome | "lease_lost">
      readonly runs: ReadonlyArray<string>
    },
    StoreError
  >
}

export class ResultStore extends Context.Service<ResultStore, ResultStoreService>()(
  "@picus/core/ResultStore",
) {}
