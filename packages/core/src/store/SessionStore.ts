import { Context, type Effect, type Option } from "effect"
import type { SessionLease } from "../domain/lease.ts"
import type { StoreError } from "./StoreError.ts"
import type { Ticket } from "./TicketStore.ts"

export interface Login {
  readonly peerId: string
  readonly sessionId: string
  readonly serverId: string
  readonly serverIp: string | null
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agentVersion: string | null
  /** What the peer said of itself (`register`'s labels): absent or null, none. */
  readonly labels?: Readonly<Record<string, string>> | null
  /** The enrollment token it registered with (absent or null: one of PICUS_TOKENS). */
  readonly tokenId?: number | null
  /**
   * The session was opened with a sealed acceptance: its peer's messages carry the session id and a
   * MAC instead of the token. Kept with the session, so an instance taking it over checks the same.
   */
  readonly sealed?: boolean
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
  /** Whether it was opened sealed (see Login.sealed); absent: it was not. */
  readonly sealed?: boolean
}

/** Who holds a peer's open session. */
export interface SessionOwner extends SessionLease {
  readonly ownerId: string
  /** Its holder is lost (its lease ran out, or it started again since): it may be taken over. */
  readonly expired: boolean
  /** Whether it was opened sealed (see Login.sealed); absent: it was not. */
  readonly sealed?: boolean
}

/** What a registration says of its peer's identity, for `admitRegistration`. */
export interface RegistrationClaim {
  readonly peerId: string
  /** The key the registration is signed by (its `peer_key`, the signature already checked); null: unsigned. */
  readonly identityKey: string | null
  /** The registration's own time (`ts`), for a signed one; null: not checked for replay. */
  readonly ts: number | null
  /** The server's clock now (epoch ms). */
  readonly now: number
  /** Registrations of one peer id are admitted at least this far apart (ms); 0: no limit. */
  readonly minIntervalMs: number
}

/** The answer of `admitRegistration`. */
export type Admission = "admitted" | "wrong_identity" | "replayed" | "too_many"

/** A server instance's row, as `instanceStatus` reads it. */
export interface InstanceStatus {
  /** How long ago it last said it was alive (the database's clock). */
  readonly aliveAgoMs: number
  /** It stopped cleanly (and has not said it is alive since). */
  readonly stopped: boolean
  /** Changes each time the instance says it is alive: compare two reads to see a live holder. */
  readonly beat: string
}

/**
 * Sessions: the registration log's writes, the sessions and the server instances whose leases hold
 * them, and what binds a peer id to its identity key. A login hands the peer's open tickets to the
 * new session in the same transaction, so it lives here whole. (The key session tokens derive from
 * is the cluster key's, which never reaches the Store.)
 */
export interface SessionStoreService {
  /**
   * Decides, in one atomic step on the peer's row (made if there is none), whether a registration
   * may open a session, and records it if so. In this order:
   * - `wrong_identity`: the peer id is bound to an identity key and the claim is not by it;
   * - `replayed`: the claim has a `ts` not newer than the last one admitted for the peer id;
   * - `too_many`: a registration of the peer id was admitted less than `minIntervalMs` ago;
   * - `admitted`: binds the id to the claim's key if it was bound to none, keeps its `ts` and `now`.
   * Registrations of one peer id (on any instance) are decided one at a time.
   */
  readonly admitRegistration: (claim: RegistrationClaim) => Effect.Effect<Admission, StoreError>

  // Registration log and sessions.
  /**
   * In one transaction: records the peer, closes its other open sessions (logout `replaced`,
   * fencing their owners), opens `sessionId` held by `serverId`'s current run at epoch 1, writes
   * the login row, and hands the new session every open ticket of the peer (oldest first): what its
   * earlier sessions left unanswered goes on here. An instance with no row yet gets one with a
   * lease of `leaseMs`; an existing instance's lease is its own to renew.
   */
  readonly login: (
    login: Login & { readonly leaseMs: number },
  ) => Effect.Effect<{ readonly epoch: number; readonly adopted: ReadonlyArray<Ticket> }, StoreError>
  /**
   * A `rejected` row. `repeats` > 1: the row stands for that many refusals with this reason (a
   * flood, counted rather than stored one by one; its peer id is then usually null).
   */
  readonly logRejected: (entry: {
    readonly peerId: string | null
    readonly reason: string
    readonly serverId: string
    readonly serverIp: string | null
    readonly repeats?: number
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
  /**
   * Ends every open session opened with one of these tokens (they were revoked): closes it, moves
   * its epoch on (fencing its holder, which lets it go at its next keep-alive) and writes its
   * logout row with the reason. Returns the sessions it ended.
   */
  readonly endSessionsOfTokens: (entry: {
    readonly tokenIds: ReadonlyArray<number>
    readonly reason: string
    readonly serverId: string
  }) => Effect.Effect<ReadonlyArray<{ readonly peerId: string; readonly sessionId: string }>, StoreError>
  readonly logShutdown: (entry: {
    readonly serverId: string
    readonly reason: string
  }) => Effect.Effect<void, StoreError>

  // Server instances and their leases. An instance holds every session it owns (opened, or took
  // over) while its own lease holds: one row renewed per instance, however many sessions it has.
  // A session is lost once its owner's lease has run out or its owner has started again since it
  // got the session (that earlier run is gone); then a live instance may take it over. The epoch
  // stays each session's fencing token: every write names it and is refused once it moved on.
  /**
   * This instance starts (again): says it is alive now (database clock) and begins a new run of
   * its id, so the sessions an earlier run held are lost from now on (any live instance, this one
   * too, takes them over). Creates its row on first call. Leaves its lease as it was (`renewLease`).
   */
  readonly instanceAlive: (serverId: string) => Effect.Effect<void, StoreError>
  /** Records that this instance stopped cleanly (its sessions are logged out); its lease ends. */
  readonly instanceStopped: (serverId: string) => Effect.Effect<void, StoreError>
  /** The row of an instance, if it ever said it was alive. */
  readonly instanceStatus: (serverId: string) => Effect.Effect<Option.Option<InstanceStatus>, StoreError>
  /** Instances other than `byServerId` not alive for `deadAfterMs` that did not stop cleanly. */
  readonly lostInstances: (entry: {
    readonly deadAfterMs: number
    readonly byServerId: string
  }) => Effect.Effect<ReadonlyArray<string>, StoreError>
  /**
   * Renews this instance's lease for `leaseMs` from now (database clock), which holds every
   * session of its current run, and says it is alive (one row written, whatever the number of
   * sessions). Creates its row if there is none. Then returns which of `sessions` (at these epochs)
   * it still holds: one missing from the answer was closed, replaced or taken over. A renewal
   * never waits for a session's lock, and one that races a takeover of this instance waits for it,
   * so the answer includes what that takeover took.
   */
  readonly renewLease: (entry: {
    readonly serverId: string
    readonly leaseMs: number
    readonly sessions: ReadonlyArray<SessionLease>
  }) => Effect.Effect<ReadonlyArray<string>, StoreError>
  /**
   * Takes over lost open sessions (at most `limit`, or just `sessionId`): those of instances
   * (other than `serverId`) whose lease ran out, and those held by an earlier run of any instance,
   * this one too. Each goes to `serverId`'s current run with its epoch up by one, which fences the
   * old owner. Concurrent takers never take the same session; a session another statement has
   * locked is left for a later call. Asked for `sessionId`, a session of `serverId`'s own name is
   * taken back at once (the caller does not hold it in memory). A taker with no row yet gets one
   * with a lease of `leaseMs`.
   */
  readonly takeOverSessions: (entry: {
    readonly serverId: string
    readonly leaseMs: number
    readonly limit: number
    readonly sessionId?: string
  }) => Effect.Effect<ReadonlyArray<TakenSession>, StoreError>
  /** The open session of a peer and who holds it. */
  readonly sessionOf: (peerId: string) => Effect.Effect<Option.Option<SessionOwner>, StoreError>
}

export class SessionStore extends Context.Service<SessionStore, SessionStoreService>()(
  "@picus/core/SessionStore",
) {}
