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
  /** The lease ran out: the session may be taken over. */
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
 * Sessions: the registration log's writes, the session leases and the server instances that hold
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
}

export class SessionStore extends Context.Service<SessionStore, SessionStoreService>()(
  "@picus/core/SessionStore",
) {}
