import { Context, type Effect, Schema, type Scope, type Stream } from "effect"

/** A failure to talk to the message broker (connection lost, command refused). */
export class TransportError extends Schema.TaggedError<TransportError>()("TransportError", {
  operation: Schema.String,
  message: Schema.String,
}) {}

/** One stream entry: the broker's id and the raw wire payload (decoded by core/protocol, not here). */
export interface Envelope {
  readonly id: string
  readonly payload: string
}

/** An entry delivered to a server instance; ack it once what it asked for is durable. */
export interface Delivery extends Envelope {
  /** True when it was taken over from a consumer that did not ack it (possibly a retry). */
  readonly redelivered: boolean
  /** True when another instance forwarded it here (it came from this instance's own stream). */
  readonly forwarded: boolean
}

export interface ReadOptions {
  readonly count: number
  /** How long to wait for a first entry when none is there; 0 returns at once. */
  readonly blockMs: number
}

/**
 * The message transport between peers and servers. Payloads are opaque strings here: the
 * transport moves bytes, `core/protocol` gives them meaning.
 *
 * Durable paths (must not lose a message): the uplink (peer -> servers, consumer group), each
 * server instance's own stream (forwarded peer messages) and each peer's inbox (server -> peer).
 * Lossy: the operator feed (`publish`/`subscribe`). Hints: which instance owns a peer's session.
 */
export class Transport extends Context.Service<
  Transport,
  {
    /** Peer -> servers: append to the uplink. Returns the entry id. */
    readonly sendUplink: (payload: string) => Effect.Effect<string, TransportError>
    /**
     * Server side: the reader of one server instance. It reads the shared uplink (as a consumer of
     * the servers' group) and the instance's own stream of forwarded messages.
     */
    readonly uplinkReader: (serverId: string) => Effect.Effect<UplinkReader, TransportError, Scope.Scope>
    /** Hands a peer's message to the instance that owns the peer's session. */
    readonly forward: (serverId: string, payload: string) => Effect.Effect<void, TransportError>
    /**
     * Marks these peers as owned by `serverId` for `ttlMs`. `take` overwrites another instance's
     * mark (a new session was just opened here); `renew` only extends marks that are free or
     * already this instance's, so a stale instance never steals back a peer that moved.
     */
    readonly claimPeers: (
      serverId: string,
      peerIds: ReadonlyArray<string>,
      ttlMs: number,
      mode: "take" | "renew",
    ) => Effect.Effect<void, TransportError>
    /** Removes the owner mark of a peer, if it is still `serverId`'s. */
    readonly releasePeer: (peerId: string, serverId: string) => Effect.Effect<void, TransportError>
    /** The instance that owns the peer's session, if one marked it and the mark has not expired. */
    readonly ownerOf: (peerId: string) => Effect.Effect<string | undefined, TransportError>
    /** Server -> peer: append to the peer's inbox. Returns the entry id. */
    readonly sendToPeer: (peerId: string, payload: string) => Effect.Effect<string, TransportError>
    /** The id of the newest entry in a peer's inbox ("0-0" when empty): read after it to skip old news. */
    readonly inboxTail: (peerId: string) => Effect.Effect<string, TransportError>
    /** A reader of one peer's inbox, on its own connection (reads block). */
    readonly inboxReader: (peerId: string) => Effect.Effect<InboxReader, TransportError, Scope.Scope>
    /** Drop inbox entries up to and including `id`: the peer has handled them. */
    readonly trimInbox: (peerId: string, id: string) => Effect.Effect<void, TransportError>
    /** Lossy broadcast on the operator feed; returns at once and never fails (lost is lost). */
    readonly publish: (payload: string) => Effect.Effect<void>
    /** Subscribe to the operator feed; messages published while not subscribed are gone. */
    readonly subscribe: Stream.Stream<string, TransportError>
  }
>()("@picus/core/Transport") {}

export interface UplinkReader {
  /** New entries of the shared uplink and of this instance's own stream (waiting up to blockMs). */
  readonly read: (options: ReadOptions) => Effect.Effect<ReadonlyArray<Delivery>, TransportError>
  /** Takes over entries left unacknowledged for at least minIdleMs (a dead instance's work). */
  readonly reclaim: (
    minIdleMs: number,
    count: number,
  ) => Effect.Effect<ReadonlyArray<Delivery>, TransportError>
  /** Acknowledges entries: they are durable and will not be delivered again. */
  readonly ack: (deliveries: ReadonlyArray<Delivery>) => Effect.Effect<void, TransportError>
}

export interface InboxReader {
  /** Entries after `afterId`, waiting up to blockMs for the first one. */
  readonly read: (
    afterId: string,
    options: ReadOptions,
  ) => Effect.Effect<ReadonlyArray<Envelope>, TransportError>
}

/** Orders stream ids ("ms-seq"), as Redis does. */
export const compareStreamIds = (a: string, b: string): number => {
  const [am = 0n, as = 0n] = a.split("-").map(BigInt)
  const [bm = 0n, bs = 0n] = b.split("-").map(BigInt)
  return am === bm ? Number(as - bs) : am < bm ? -1 : 1
}
