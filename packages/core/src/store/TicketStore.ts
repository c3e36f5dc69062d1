import { Context, type Effect, type Option } from "effect"
import type { LeaseLost, SessionLease } from "../domain/lease.ts"
import type { ResultStatus, TicketState } from "../domain/ticket.ts"
import type { CatalogJob } from "./CatalogStore.ts"
import type { SessionOwner } from "./SessionStore.ts"
import type { StoreError } from "./StoreError.ts"

export interface Ticket {
  readonly ticket: string
  readonly peerId: string
  /** The session it was last given to; null for a ticket submitted while its peer was offline. */
  readonly sessionId: string | null
  readonly jobId: string | null
  readonly name: string
  readonly os: string
  readonly distro: string
  readonly command: string
  readonly timeoutMs: number
  readonly state: TicketState
  /** How many times it was handed to the transport. */
  readonly attempts: number
  /** When it was last handed to the transport. */
  readonly deliveredAt: number | null
  /** When it was created (what the stores read back; for the latency metrics). */
  readonly createdAt?: number
}

/** A job submitted by an operator (not from the catalog); os and distro default to the peer's. */
export interface SubmittedJob {
  readonly name: string
  readonly command: string
  readonly timeoutMs: number
}

/**
 * What a cancel did to one ticket:
 * - cancelled: it was not running (queued, or delivered with no session to carry it) and ended
 *   `cancelled` now;
 * - requested: it is delivered to a session: the request is recorded, and `owner`, the instance
 *   holding that session, is to tell its peer to stop the job (asked again, it is told again);
 * - closed: it had ended already (`state` says how), nothing changed;
 * - unknown: no such ticket.
 */
export type CancelOutcome =
  | {
      readonly ticket: string
      readonly outcome: "cancelled"
      readonly peerId: string
      /** The session it was waiting in, and who holds it: to drop it from what it is about to send. */
      readonly owner: SessionOwner | undefined
    }
  | {
      readonly ticket: string
      readonly outcome: "requested"
      readonly peerId: string
      readonly owner: SessionOwner
    }
  | {
      readonly ticket: string
      readonly outcome: "closed"
      readonly peerId: string
      readonly state: TicketState
    }
  | { readonly ticket: string; readonly outcome: "unknown" }

/** A ticket as an operator reads it, with its result if it has one. */
export interface TicketInfo {
  readonly ticket: string
  readonly peerId: string
  readonly name: string
  readonly state: TicketState
  readonly closeReason: string | null
  readonly cancelReason: string | null
  readonly result:
    | {
        readonly status: ResultStatus
        readonly exitCode: number | null
        readonly output: string
        readonly truncated: boolean
      }
    | undefined
}

/** Tickets: created, handed to the transport, and ended without a result. */
export interface TicketStoreService {
  /** Creates one ticket per job, in state queued, in one transaction. */
  readonly createTickets: (entry: {
    readonly peerId: string
    readonly sessionId: string
    readonly serverId: string
    readonly jobs: ReadonlyArray<CatalogJob>
  }) => Effect.Effect<ReadonlyArray<Ticket>, StoreError>
  /**
   * Operator jobs for one peer: creates their tickets for the peer's open session, or for its next
   * one when it is offline. Says who holds the session, to be told that work is waiting.
   */
  readonly submitTickets: (entry: {
    readonly peerId: string
    readonly serverId: string
    readonly jobs: ReadonlyArray<SubmittedJob>
  }) => Effect.Effect<
    { readonly tickets: ReadonlyArray<Ticket>; readonly owner: SessionOwner | undefined },
    StoreError
  >
  /**
   * The session's queued tickets, oldest first; with `after`, only those newer than that ticket
   * (ids come from one sequence: what a holder has not seen yet). Queued tickets of its peer that no
   * open session carries (a submission that raced a login replacing the session it named) become
   * its own first, and come back whatever their ids.
   */
  readonly queuedTickets: (
    sessionId: string,
    after?: string,
  ) => Effect.Effect<ReadonlyArray<Ticket>, StoreError>
  /**
   * How many tickets each of these open sessions has queued, counting its peer's tickets that no open
   * session carries (sessions with none are left out).
   */
  readonly queuedCounts: (
    sessionIds: ReadonlyArray<string>,
  ) => Effect.Effect<ReadonlyMap<string, number>, StoreError>
  /**
   * Records that these tickets of the session are handed to the transport now (attempts + 1);
   * returns those still open, as stored: what to send is what the database says, never what a
   * message said. Fails with LeaseLost when the session is no longer held at `epoch`.
   */
  readonly markDelivered: (
    lease: SessionLease,
    tickets: ReadonlyArray<string>,
  ) => Effect.Effect<ReadonlyArray<Ticket>, StoreError | LeaseLost>
  /**
   * The reconciler's sweep, safe to run from every instance: queued tickets older than
   * `deliveryDeadlineMs` end undeliverable; delivered tickets with no session carrying them on
   * (closed, or never given one) and no answer by `2 × timeout + executionSlackMs` end timed_out.
   */
  readonly expireTickets: (entry: {
    readonly deliveryDeadlineMs: number
    readonly executionSlackMs: number
  }) => Effect.Effect<{ readonly undeliverable: number; readonly timedOut: number }, StoreError>
  /**
   * Moves the given tickets that are still open to a terminal state, with why when it is not the
   * plain meaning of the state (`tickets.close_reason`); returns those it moved.
   */
  readonly closeTickets: (
    tickets: ReadonlyArray<string>,
    state: TicketState,
    reason?: string,
    /** Only tickets of this peer. */
    peerId?: string,
  ) => Effect.Effect<ReadonlyArray<string>, StoreError>
  readonly ticketState: (ticket: string) => Effect.Effect<Option.Option<TicketState>, StoreError>
  /**
   * Cancels tickets, in one transaction: those not running end `cancelled` with close_reason
   * `cancelled by <by>: <reason>`; delivered ones of an open session get that request recorded,
   * for their holder to pass on. One outcome per ticket given, in order.
   */
  readonly cancelTickets: (request: {
    readonly tickets: ReadonlyArray<string>
    readonly by: string
    readonly reason: string
  }) => Effect.Effect<ReadonlyArray<CancelOutcome>, StoreError>
  /**
   * Cancels a run's open tickets as cancelTickets does, in one transaction that locks the run
   * first (so none of its pending tickets is let go meanwhile). None: no such run.
   */
  readonly cancelRun: (request: {
    readonly runId: string
    readonly by: string
    readonly reason: string
  }) => Effect.Effect<Option.Option<ReadonlyArray<CancelOutcome>>, StoreError>
  /**
   * For a holder told of cancels (a notice names the tickets, and only wakes it): of these tickets
   * of the session, each one's state and its cancel request (null when none was made).
   */
  readonly cancelRequests: (
    sessionId: string,
    tickets: ReadonlyArray<string>,
  ) => Effect.Effect<
    ReadonlyArray<{ readonly ticket: string; readonly state: TicketState; readonly reason: string | null }>,
    StoreError
  >
  readonly ticketInfo: (ticket: string) => Effect.Effect<Option.Option<TicketInfo>, StoreError>
}

/** The close_reason of a cancelled ticket: who and why. */
export const cancelReasonOf = (by: string, reason: string): string => `cancelled by ${by}: ${reason}`

export class TicketStore extends Context.Service<TicketStore, TicketStoreService>()(
  "@picus/core/TicketStore",
) {}
