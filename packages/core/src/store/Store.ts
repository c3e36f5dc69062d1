import { Context, type Effect, type Option, Schema } from "effect"
import type { LeaseLost, SessionLease } from "../domain/lease.ts"
import type { ResultStatus, TicketState } from "../domain/ticket.ts"

export { holds, LeaseLost, type SessionLease } from "../domain/lease.ts"
export {
  canMove,
  isTerminal,
  OPEN_TICKET_STATES,
  ResultStatus,
  TERMINAL_TICKET_STATES,
  TicketState,
  ticketStateOf,
} from "../domain/ticket.ts"

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

export interface TokenInfo {
  readonly tokenId: number
  readonly name: string
  readonly prefix: string
  readonly createdAt: number
  readonly revokedAt: number | null
}

export interface NewToken {
  readonly name: string
  readonly prefix: string
  readonly hash: Uint8Array
}

export interface Login {
  readonly peerId: string
  readonly sessionId: string
  readonly serverId: string
  readonly serverIp: string | null
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agentVersion: string | null
}

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
}

/** A job submitted by an operator (not from the catalog); os and distro default to the peer's. */
export interface SubmittedJob {
  readonly name: string
  readonly command: string
  readonly timeoutMs: number
}

/** A session this instance took over from a lost one, with what it needs to carry on. */
export interface TakenSession extends SessionLease {
  readonly peerId: string
  readonly os: string | null
  readonly distro: string | null
  readonly fromServerId: string
  /** Its open tickets (queued and delivered), oldest first. */
  readonly tickets: ReadonlyArray<Ticket>
  /** Whether its peer sends heartbeats (a seed peer does not); absent: it does. */
  readonly heartbeats?: boolean
}

/** Who holds a peer's open session. */
export interface SessionOwner extends SessionLease {
  readonly ownerId: string
  /** The lease ran out: the session may be taken over. */
  readonly expired: boolean
}

/** A server instance's row, as `instanceStatus` reads it. */
export interface InstanceStatus {
  /** How long ago it last said it was alive (the database's clock). */
  readonly aliveAgoMs: number
  /** It stopped cleanly (and has not said it is alive since). */
  readonly stopped: boolean
  /** Changes each time the instance says it is alive: compare two reads to see a live holder. */
  readonly beat: string
}

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

/**
 * What became of a result:
 * - recorded: written, and its ticket reached its terminal state;
 * - duplicate: the ticket already has a result (the first one stands);
 * - unknown_ticket: no such ticket;
 * - foreign_ticket: the ticket belongs to another peer or session;
 * - ticket_closed: the ticket already ended without a result (cancelled, undeliverable, timed out).
 */
export type RecordOutcome = "recorded" | "duplicate" | "unknown_ticket" | "foreign_ticket" | "ticket_closed"

export interface SessionRow {
  readonly peerId: string
  readonly sessionId: string
  readonly loginAt: number
  readonly logoutAt: number | null
  readonly durationMs: number
  readonly logoutReason: string | null
  readonly serverId: string
}

export interface LogRow {
  readonly id: number
  readonly at: number
  readonly event: "login" | "rejected" | "logout" | "shutdown"
  readonly peerId: string | null
  readonly sessionId: string | null
  readonly reason: string | null
  readonly serverId: string
  readonly serverIp: string | null
}

export interface ResultRow {
  readonly ticket: string
  readonly peerId: string
  readonly jobName: string
  readonly status: ResultStatus
  readonly exitCode: number | null
  readonly output: string
  readonly truncated: boolean
  readonly receivedAt: number
}

/**
 * The system of record. Every decision the server makes is written here before it is acted on
 * or acknowledged; Redis only carries messages. Times are epoch milliseconds from the database.
 */
export class Store extends Context.Service<
  Store,
  {
    // Enrollment tokens (hashes only).
    readonly createToken: (token: NewToken) => Effect.Effect<TokenInfo, StoreError>
    readonly listTokens: Effect.Effect<ReadonlyArray<TokenInfo>, StoreError>
    /** Revokes by id or by prefix; returns how many tokens it revoked. */
    readonly revokeToken: (idOrPrefix: string) => Effect.Effect<number, StoreError>
    readonly findActiveToken: (hash: Uint8Array) => Effect.Effect<Option.Option<TokenInfo>, StoreError>

    // Job catalog.
    /** Makes the catalog exactly `jobs`: upserts them and disables every other job. */
    readonly replaceCatalog: (jobs: ReadonlyArray<CatalogJob>) => Effect.Effect<void, StoreError>
    /** The enabled jobs that fit a peer of this os and distro (null: it did not say); see jobFitsPeer. */
    readonly jobsFor: (
      os: string | null,
      distro: string | null,
    ) => Effect.Effect<ReadonlyArray<CatalogJob>, StoreError>

    /**
     * The cluster's session key (session tokens are derived from it): the stored one, or `proposed`
     * stored as the key when there is none yet. Every instance gets the same answer.
     */
    readonly sessionKey: (proposed: Uint8Array) => Effect.Effect<Uint8Array, StoreError>

    // Registration log and session leases.
    /**
     * In one transaction: records the peer, closes its other open sessions (logout `replaced`,
     * fencing their owners), opens `sessionId` with a lease held by `serverId` at epoch 1, writes the
     * login row, and hands the new session every open ticket of the peer (oldest first): what its
     * earlier sessions left unanswered goes on here.
     */
    readonly login: (
      login: Login & { readonly leaseMs: number },
    ) => Effect.Effect<{ readonly epoch: number; readonly adopted: ReadonlyArray<Ticket> }, StoreError>
    readonly logRejected: (entry: {
      readonly peerId: string
      readonly reason: string
      readonly serverId: string
      readonly serverIp: string | null
    }) => Effect.Effect<void, StoreError>
    /**
     * Closes a session held at `epoch` and writes its logout row; its open tickets stay open for the
     * peer's next session. False if it was already closed or has moved to another epoch.
     */
    readonly logout: (entry: {
      readonly peerId: string
      readonly sessionId: string
      readonly epoch: number
      readonly reason: string
      readonly serverId: string
    }) => Effect.Effect<boolean, StoreError>
    readonly logShutdown: (entry: {
      readonly serverId: string
      readonly reason: string
    }) => Effect.Effect<void, StoreError>

    // Server instances: each says it is alive; their session leases are renewed separately.
    /** Records that this instance is alive now (database clock); creates its row on first call. */
    readonly instanceAlive: (serverId: string) => Effect.Effect<void, StoreError>
    /** Records that this instance stopped cleanly (its sessions are already logged out). */
    readonly instanceStopped: (serverId: string) => Effect.Effect<void, StoreError>
    /** The row of an instance, if it ever said it was alive. */
    readonly instanceStatus: (serverId: string) => Effect.Effect<Option.Option<InstanceStatus>, StoreError>
    /** Instances other than `byServerId` not alive for `deadAfterMs` that did not stop cleanly. */
    readonly lostInstances: (entry: {
      readonly deadAfterMs: number
      readonly byServerId: string
    }) => Effect.Effect<ReadonlyArray<string>, StoreError>
    /**
     * Extends the leases `serverId` holds on these sessions (at these epochs) by `leaseMs`; returns
     * the session ids it still holds. A session missing from the answer was closed or taken over.
     */
    readonly renewLeases: (entry: {
      readonly serverId: string
      readonly leaseMs: number
      readonly sessions: ReadonlyArray<SessionLease>
    }) => Effect.Effect<ReadonlyArray<string>, StoreError>
    /**
     * Takes over open sessions whose lease has run out (at most `limit`, or just `sessionId`): the
     * lease goes to `serverId` and the epoch up by one, which fences the old owner. Concurrent takers
     * never take the same session.
     */
    readonly takeOverSessions: (entry: {
      readonly serverId: string
      readonly leaseMs: number
      readonly limit: number
      readonly sessionId?: string
    }) => Effect.Effect<ReadonlyArray<TakenSession>, StoreError>
    /** The open session of a peer and who holds it. */
    readonly sessionOf: (peerId: string) => Effect.Effect<Option.Option<SessionOwner>, StoreError>

    // Tickets and results.
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
    /** The session's queued tickets, oldest first. */
    readonly queuedTickets: (sessionId: string) => Effect.Effect<ReadonlyArray<Ticket>, StoreError>
    /** How many tickets each of these sessions has queued (sessions with none are left out). */
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

    // Reading what happened.
    readonly sessions: (filter: {
      readonly peerId?: string
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<SessionRow>, StoreError>
    readonly registrationLog: (filter: {
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<LogRow>, StoreError>
    readonly results: (filter: {
      readonly peerId?: string
      readonly limit: number
    }) => Effect.Effect<ReadonlyArray<ResultRow>, StoreError>
  }
>()("@picus/core/Store") {}
