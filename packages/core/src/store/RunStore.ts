import { Context, type Effect, Schema } from "effect"
import type { TicketState } from "../domain/ticket.ts"
import type { SessionOwner } from "./SessionStore.ts"
import type { StoreError } from "./StoreError.ts"
import type { Ticket } from "./TicketStore.ts"

/**
 * Which peers a run is for. Every criterion given must match (ids, os, distro, each label k=v);
 * `all` alone matches every peer ever registered. At least one must be given.
 */
export interface RunTarget {
  readonly peers?: ReadonlyArray<string>
  readonly os?: string
  readonly distro?: string
  readonly labels?: Readonly<Record<string, string>>
  readonly all?: boolean
}

/** A rollout bound as given: `N` tickets, or `P%` of the run's tickets. */
export type RunAmount = { readonly count: number } | { readonly percent: number }

/**
 * A bound of `amount` over `total` tickets, as SSM counts them: a percentage of the targets,
 * rounded down, but never below 1 for a concurrency (a run that sends nothing never ends).
 */
export const resolveAmount = (
  amount: RunAmount | undefined,
  total: number,
  kind: "concurrency" | "errors",
): number | null => {
  if (amount === undefined) return null
  if ("count" in amount) return amount.count
  const n = Math.floor((amount.percent * total) / 100)
  return kind === "concurrency" ? Math.max(1, n) : n
}

export interface NewRun {
  readonly target: RunTarget
  readonly name: string
  readonly command: string
  /** Each command's timeout on its peer. */
  readonly timeoutMs: number
  /** At most this many of its tickets open at once (the rest wait `pending`); absent: all. */
  readonly maxConcurrency?: RunAmount
  /** Once more than this many failed or timed out, none more is sent; absent: no limit. */
  readonly maxErrors?: RunAmount
  /** How long from now its tickets may wait to be sent; those not sent by then end undeliverable. */
  readonly deliverWithinMs: number
  /** Skip the peers that have no open session now, instead of waiting for their next login. */
  readonly onlineOnly?: boolean
  /** Write nothing: say which peers it would reach. */
  readonly dryRun?: boolean
  /** A target matching no peer makes an empty run instead of failing. */
  readonly allowEmpty?: boolean
  /** Who asks (an operator's tool name and user), recorded on the run and its tickets. */
  readonly createdBy: string
}

/** A peer a run targets. */
export interface RunPeer {
  readonly peerId: string
  readonly os: string | null
  readonly distro: string | null
  readonly labels: Readonly<Record<string, string>>
  /** It has an open session now. */
  readonly online: boolean
}

export interface CreatedRun {
  /** Null for a dry run. */
  readonly runId: string | null
  /** The peers given a ticket (a dry run's: those it would give one). */
  readonly peers: ReadonlyArray<RunPeer>
  /** Offline peers left out by `onlineOnly`. */
  readonly skipped: ReadonlyArray<RunPeer>
  readonly tickets: ReadonlyArray<Ticket>
  readonly maxConcurrency: number | null
  readonly maxErrors: number | null
  /** The holders of the sessions of its queued tickets, to be told that work is waiting. */
  readonly owners: ReadonlyArray<SessionOwner>
}

/** What advancing runs did: tickets let go (and whom to tell), tickets ended. */
export interface RunAdvance {
  readonly promoted: ReadonlyArray<Ticket>
  readonly owners: ReadonlyArray<SessionOwner>
  /** Tickets ended cancelled (max errors exceeded). */
  readonly cancelled: number
  /** Tickets ended undeliverable (the run's deadline passed). */
  readonly undeliverable: number
}

export interface RunInfo {
  readonly runId: string
  readonly createdAt: number
  readonly createdBy: string
  readonly name: string
  readonly command: string
  readonly timeoutMs: number
  readonly target: RunTarget
  readonly maxConcurrency: number | null
  readonly maxErrors: number | null
  readonly deliverBy: number
  /** When none of its tickets was open any more; null while some are. */
  readonly closedAt: number | null
  /** How many of its tickets are in each state. */
  readonly counts: Readonly<Partial<Record<TicketState, number>>>
  /** Its open tickets whose peer has no open session now. */
  readonly offline: number
}

/** One ticket of a run (or any ticket), as an operator reads it. */
export interface TicketView {
  readonly ticket: string
  readonly runId: string | null
  readonly peerId: string
  readonly name: string
  readonly command: string
  readonly state: TicketState
  readonly attempts: number
  readonly closeReason: string | null
  readonly createdAt: number
  readonly deliveredAt: number | null
  readonly finishedAt: number | null
  readonly exitCode: number | null
  /** The job's output (all of it from `ticketView`, its first line from the lists). */
  readonly output: string | null
  readonly truncated: boolean
  readonly startedAt: number | null
  readonly endedAt: number | null
  /** Its peer has an open session now. */
  readonly online: boolean
}

/** A peer as an operator reads it. */
export interface PeerView {
  readonly peerId: string
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agentVersion: string | null
  readonly labels: Readonly<Record<string, string>>
  readonly lastSeenAt: number
  /** The instance holding its open session; null while it is offline. */
  readonly heldBy: string | null
  readonly sessionId: string | null
}

/** A target that matches no peer (and `allowEmpty` was not given), or names peers never seen. */
export class NoMatchingPeers extends Schema.TaggedError<NoMatchingPeers>()("NoMatchingPeers", {
  message: Schema.String,
  /** Peer ids given by name that never registered. */
  unknown: Schema.Array(Schema.String),
}) {}

/** Runs: a command for many peers, rolled out under bounds, and what the operator reads of them. */
export interface RunStoreService {
  /**
   * Resolves the target's peers and, in one transaction, writes the run and one ticket per peer:
   * the first `maxConcurrency` queued, the rest pending. A dry run writes nothing.
   */
  readonly createRun: (run: NewRun) => Effect.Effect<CreatedRun, StoreError | NoMatchingPeers>
  /**
   * After tickets of these runs ended: a run with more failures than its max errors has its pending
   * and queued tickets cancelled (with why); otherwise pending tickets become queued up to its max
   * concurrency (each with a new ticket id, so a holder reading only ids newer than its last sees
   * it). A run with no open ticket left is closed.
   */
  readonly advanceRuns: (runIds: ReadonlyArray<string>) => Effect.Effect<RunAdvance, StoreError>
  /** The periodic sweep: tickets of runs past their deadline end undeliverable, and every open run is advanced. */
  readonly sweepRuns: () => Effect.Effect<RunAdvance, StoreError>
  readonly runInfo: (runId: string) => Effect.Effect<RunInfo | undefined, StoreError>
  /** The most recent runs, newest first. */
  readonly recentRuns: (limit: number) => Effect.Effect<ReadonlyArray<RunInfo>, StoreError>
  /**
   * A run's tickets in id order; with `endedSince` (epoch ms), only those that ended at or after it
   * (the cheap read of a waiting operator).
   */
  readonly runTickets: (
    runId: string,
    options?: { readonly endedSince?: number },
  ) => Effect.Effect<ReadonlyArray<TicketView>, StoreError>
  readonly ticketView: (ticket: string) => Effect.Effect<TicketView | undefined, StoreError>
  /** Open tickets (pending, queued, delivered), oldest first. */
  readonly openTickets: (filter: {
    readonly peerId?: string
    readonly runId?: string
    readonly limit: number
  }) => Effect.Effect<ReadonlyArray<TicketView>, StoreError>
  readonly peerViews: () => Effect.Effect<ReadonlyArray<PeerView>, StoreError>
}

export class RunStore extends Context.Service<RunStore, RunStoreService>()("@picus/core/RunStore") {}

/** The close reason of a run's tickets cancelled for its failures. */
export const maxErrorsReason = (errors: number, maxErrors: number) =>
  `max errors exceeded (${errors} > ${maxErrors})`

/** The close reason of a run's tickets not sent by its deadline. */
export const RUN_DEADLINE_REASON = "the run's deadline passed before it was sent"

/** Whether a peer with these facts is in the target (the rule the PostgreSQL statement follows). */
export const matchesTarget = (
  target: RunTarget,
  peer: {
    readonly peerId: string
    readonly os: string | null
    readonly distro: string | null
    readonly labels: Readonly<Record<string, string>>
  },
): boolean =>
  (target.peers === undefined || target.peers.includes(peer.peerId)) &&
  (target.os === undefined || peer.os === target.os) &&
  (target.distro === undefined || peer.distro === target.distro) &&
  Object.entries(target.labels ?? {}).every(([k, v]) => peer.labels[k] === v)

/** A target naming no criterion and not `all`: refused, so a slip never reaches the whole fleet. */
export const isEmptyTarget = (target: RunTarget): boolean =>
  target.all !== true &&
  target.peers === undefined &&
  target.os === undefined &&
  target.distro === undefined &&
  Object.keys(target.labels ?? {}).length === 0
