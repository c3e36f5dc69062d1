import { Context, type Effect, type Option, Schema } from "effect"

/** The database refused or could not be reached. */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  operation: Schema.String,
  message: Schema.String,
}) {}

export const TicketState = Schema.Literals([
  "queued",
  "delivered",
  "succeeded",
  "failed",
  "timed_out",
  "undeliverable",
  "cancelled",
])
export type TicketState = typeof TicketState.Type
export const TERMINAL_TICKET_STATES: ReadonlyArray<TicketState> = [
  "succeeded",
  "failed",
  "timed_out",
  "undeliverable",
  "cancelled",
]

export const ResultStatus = Schema.Literals(["succeeded", "failed", "timed_out", "refused"])
export type ResultStatus = typeof ResultStatus.Type

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
  readonly sessionId: string
  readonly jobId: string | null
  readonly name: string
  readonly os: string
  readonly distro: string
  readonly command: string
  readonly timeoutMs: number
  readonly state: TicketState
}

export interface NewResult {
  readonly ticket: string
  readonly peerId: string
  readonly sessionId: string
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
    readonly jobsFor: (os: string, distro: string) => Effect.Effect<ReadonlyArray<CatalogJob>, StoreError>

    // Registration log.
    /** Records the peer and writes the login row that opens `sessionId`. */
    readonly login: (login: Login) => Effect.Effect<void, StoreError>
    readonly logRejected: (entry: {
      readonly peerId: string
      readonly reason: string
      readonly serverId: string
      readonly serverIp: string | null
    }) => Effect.Effect<void, StoreError>
    /** Writes the logout row that closes a session; false if it was already closed. */
    readonly logout: (entry: {
      readonly peerId: string
      readonly sessionId: string
      readonly reason: string
      readonly serverId: string
    }) => Effect.Effect<boolean, StoreError>
    readonly logShutdown: (entry: {
      readonly serverId: string
      readonly reason: string
    }) => Effect.Effect<void, StoreError>

    // Server instances: each one says it is alive; the sessions of one that stopped saying so
    // are closed by the others.
    /** Records that this instance is alive now (database clock); creates its row on first call. */
    readonly instanceAlive: (serverId: string) => Effect.Effect<void, StoreError>
    /** Records that this instance stopped cleanly (its sessions are already logged out). */
    readonly instanceStopped: (serverId: string) => Effect.Effect<void, StoreError>
    /**
     * Logs out, with `reason`, every open session whose instance has not been alive for `deadAfterMs`
     * (and did not stop cleanly), and cancels their open tickets. The logout rows name `byServerId`.
     * Never the caller's own sessions: an instance running this is not lost, only slow.
     * Returns the sessions it closed.
     */
    readonly closeSessionsOfLostInstances: (entry: {
      readonly deadAfterMs: number
      readonly reason: string
      readonly byServerId: string
    }) => Effect.Effect<ReadonlyArray<{ readonly peerId: string; readonly sessionId: string }>, StoreError>
    /** Of the given sessions, those that have a logout row (closed by someone else). */
    readonly closedSessions: (
      sessionIds: ReadonlyArray<string>,
    ) => Effect.Effect<ReadonlyArray<string>, StoreError>

    // Tickets and results.
    /** Creates one ticket per job, in state queued, in one transaction. */
    readonly createTickets: (entry: {
      readonly peerId: string
      readonly sessionId: string
      readonly serverId: string
      readonly jobs: ReadonlyArray<CatalogJob>
    }) => Effect.Effect<ReadonlyArray<Ticket>, StoreError>
    readonly markDelivered: (tickets: ReadonlyArray<string>) => Effect.Effect<void, StoreError>
    /** Writes a result once and moves its ticket to its terminal state, in one transaction. */
    readonly recordResult: (result: NewResult) => Effect.Effect<RecordOutcome, StoreError>
    /** Moves a session's open tickets to a terminal state (e.g. cancelled at logout). */
    readonly closeOpenTickets: (sessionId: string, state: TicketState) => Effect.Effect<number, StoreError>
    /** Moves the given tickets that are still open to a terminal state; returns those it moved. */
    readonly closeTickets: (
      tickets: ReadonlyArray<string>,
      state: TicketState,
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

/** The terminal ticket state a result status leads to. */
export const ticketStateOf = (status: ResultStatus): TicketState =>
  status === "succeeded" ? "succeeded" : status === "timed_out" ? "timed_out" : "failed"
