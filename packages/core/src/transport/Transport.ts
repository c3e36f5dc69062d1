import { Context, type Effect, Schema, type Scope, type Stream } from "effect"

/** A failure to talk to the message broker (connection lost, command refused). */
export class TransportError extends Schema.TaggedError<TransportError>()("TransportError", {
  operation: Schema.String,
  message: Schema.String,
  /**
   * `no_group`: the consumer group is gone (Redis restarted without its data), told by the reply's
   * error code; absent for any other failure.
   */
  reason: Schema.optionalKey(Schema.Literal("no_group")),
  cause: Schema.optionalKey(Schema.Defect()),
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
  /** Set when it came from another (lost) instance's own stream: see UplinkReader.drainStreamOf. */
  readonly fromServerId?: string
}

/** An uplink entry set aside because it could not be handled, and why. */
export interface DeadLetter {
  /** Its id in the dead-letter stream. */
  readonly id: string
  readonly payload: string
  readonly reason: string
  /** How many times it was tried. */
  readonly attempts: number
  /** Its id where it came from (the uplink, or an instance's own stream). */
  readonly sourceId: string
  /** The instance that set it aside. */
  readonly serverId: string
  /** When it was set aside (epoch ms). */
  readonly at: number
}

export interface SendToPeerOptions {
  /**
   * `notice`: for an inbox that may be nobody's (a rejection of a registration without a nonce,
   * `session_expired`): an inbox this creates expires after REPLY_TTL_MS. `session`: a session opens
   * on this inbox (its acceptance): any such expiry is lifted. Absent: a plain append.
   */
  readonly lifetime?: "notice" | "session"
  /**
   * A sealed session's key for its messages to the peer (`Trust.serverToPeerKey` of its token): the
   * gateway's signing transport (server/gateway/Signing.ts) authenticates the payload with an HMAC
   * under it (see trust/mac.ts) instead of signing it. Plain transports write the payload as it is.
   */
  readonly macKey?: string
}

/** How long the reply to a registration is kept for its peer to read. */
export const REPLY_TTL_MS = 10 * 60_000

/** At most this many dead letters are kept; the oldest go first. */
export const MAX_DEAD_LETTERS = 10_000

export interface ReadOptions {
  readonly count: number
  /** How long to wait for a first entry when none is there; 0 returns at once. */
  readonly blockMs: number
}

/**
 * The message transport between peers and servers. Payloads are opaque strings here: the
 * transport moves bytes, `core/protocol` gives them meaning.
 *
 * Durable paths (must not lose a message): the uplink (peer -> servers: an intake list peers push
 * onto, moved by the servers onto a stream read by a consumer group), each server instance's own
 * stream (forwarded peer messages) and each peer's inbox (server -> peer). Lossy: the operator feed
 * (`publish`/`subscribe`). Hints: which instance owns a peer's session.
 */
export class Transport extends Context.Service<
  Transport,
  {
    /**
     * Peer -> servers: push onto the uplink's intake (all a peer's Redis user may do there). Returns a
     * receipt, not an entry id: how many entries the intake held right after the push. The entry
     * gets its id when a server instance moves it onto the uplink stream.
     */
    readonly sendUplink: (payload: string) => Effect.Effect<string, TransportError>
    /**
     * Server side: the reader of one server instance. It reads the shared uplink (as a consumer of
     * the servers' group) and the instance's own stream of forwarded messages. While it lives it
     * moves the intake onto the uplink stream, in order, as entries arrive (any number of instances
     * may do so side by side); entries over MAX_MESSAGE_BYTES are dropped there and counted.
     */
    readonly uplinkReader: (serverId: string) => Effect.Effect<UplinkReader, TransportError, Scope.Scope>
    /**
     * How long the oldest uplink entry not yet read by any server instance has waited, in ms (0 when
     * every entry has been read): how far behind the servers are, together. Entries still on the
     * intake count from when the intake was first seen holding them.
     */
    readonly uplinkBacklogMs: Effect.Effect<number, TransportError>
    /** How many intake entries were dropped for being over MAX_MESSAGE_BYTES, in all. */
    readonly intakeDropped: Effect.Effect<number, TransportError>
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
    readonly sendToPeer: (
      peerId: string,
      payload: string,
      options?: SendToPeerOptions,
    ) => Effect.Effect<string, TransportError>
    /**
     * Server -> peer: append these to the peer's inbox, in order, in one round trip. A failure fails
     * them all, though some may have been added (a job that reaches a peer twice runs once).
     */
    readonly sendManyToPeer: (
      peerId: string,
      payloads: ReadonlyArray<string>,
      options?: Pick<SendToPeerOptions, "macKey">,
    ) => Effect.Effect<ReadonlyArray<string>, TransportError>
    /**
     * Server -> a registering peer: the reply to a registration that carried a nonce, in a stream of
     * its own that expires after `REPLY_TTL_MS` (so a flood of registrations leaves nothing behind).
     */
    readonly sendReply: (nonce: string, payload: string) => Effect.Effect<string, TransportError>
    /** A reader of the replies to the registration with this nonce, on its own connection. */
    readonly replyReader: (nonce: string) => Effect.Effect<InboxReader, TransportError, Scope.Scope>
    /** The id of the newest entry in a peer's inbox ("0-0" when empty): read after it to skip old news. */
    readonly inboxTail: (peerId: string) => Effect.Effect<string, TransportError>
    /** A reader of one peer's inbox, on its own connection (reads block). */
    readonly inboxReader: (peerId: string) => Effect.Effect<InboxReader, TransportError, Scope.Scope>
    /** Drop inbox entries up to and including `id`: the peer has handled them. */
    readonly trimInbox: (peerId: string, id: string) => Effect.Effect<void, TransportError>
    /**
     * Peer side, many peers at once (simulated fleets): pushes these messages onto the uplink's
     * intake in one round trip, all or none, in order. Returns a receipt per message (its place in
     * the intake right after the push, from 1), not entry ids.
     */
    readonly sendUplinkBatch: (
      payloads: ReadonlyArray<string>,
    ) => Effect.Effect<ReadonlyArray<string>, TransportError>
    /**
     * Many peers' inboxes read together over a few connections (a blocking read per peer would
     * need a connection per peer). Peers can be added and removed while it runs; it stops with
     * the scope.
     */
    readonly inboxFan: (options?: InboxFanOptions) => Effect.Effect<InboxFan, TransportError, Scope.Scope>
    /** `trimInbox` for many peers in one round trip: each inbox up to and including its id. */
    readonly trimInboxes: (
      upTo: ReadonlyArray<readonly [peerId: string, id: string]>,
    ) => Effect.Effect<void, TransportError>
    /** The dead letters, oldest first. */
    readonly deadLetters: (count: number) => Effect.Effect<ReadonlyArray<DeadLetter>, TransportError>
    /** Puts these dead letters back on the uplink, to be handled again; returns how many. */
    readonly retryDeadLetters: (ids: ReadonlyArray<string>) => Effect.Effect<number, TransportError>
    /** Deletes these dead letters; returns how many. */
    readonly dropDeadLetters: (ids: ReadonlyArray<string>) => Effect.Effect<number, TransportError>
    /**
     * Lossy broadcast on the operator feed; returns at once and never fails (lost is lost). A
     * function is called only when the feed has listeners (known within a second): nobody pays for
     * encoding events nobody reads.
     */
    readonly publish: (payload: string | (() => string)) => Effect.Effect<void>
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
  /**
   * Takes what is left in a lost instance's own stream: messages forwarded to it that it never
   * handled (pending or never read). They are this reader's from then on; ack them as usual.
   */
  readonly drainStreamOf: (
    lostServerId: string,
    count: number,
  ) => Effect.Effect<ReadonlyArray<Delivery>, TransportError>
  /** Acknowledges entries: they are durable and will not be delivered again. */
  readonly ack: (deliveries: ReadonlyArray<Delivery>) => Effect.Effect<void, TransportError>
  /**
   * Sets an entry aside in the dead-letter stream with its reason, and acknowledges it, in one
   * step: it is either still pending or a dead letter, never neither.
   */
  readonly deadLetter: (
    delivery: Delivery,
    why: { readonly reason: string; readonly attempts: number },
  ) => Effect.Effect<void, TransportError>
}

export interface InboxReader {
  /** Entries after `afterId`, waiting up to blockMs for the first one. */
  readonly read: (
    afterId: string,
    options: ReadOptions,
  ) => Effect.Effect<ReadonlyArray<Envelope>, TransportError>
}

export interface InboxFanOptions {
  /** Inboxes read by one XREAD, on one connection: more peers open more connections. Default 1000. */
  readonly keysPerRead?: number
  /**
   * How long one read waits for news. A peer added while a read waits is read from the next one,
   * so this bounds how late its first entries can be if waking the read fails. Default 250.
   */
  readonly blockMs?: number
  /** Entries taken per inbox per read. Default 64. */
  readonly count?: number
}

/** New entries of one peer's inbox (or of a reply stream it watches), in stream order. */
export interface InboxBatch {
  readonly peerId: string
  readonly entries: ReadonlyArray<Envelope>
  /** Set when the entries are of the reply stream of the peer's registration with this nonce. */
  readonly nonce?: string
}

export interface InboxFan {
  /**
   * Starts reading these peers' inboxes after their newest entry (old news is skipped, like
   * `inboxTail` then `inboxReader`). A peer already in the fan keeps its place.
   */
  readonly add: (peerIds: ReadonlyArray<string>) => Effect.Effect<void, TransportError>
  /** Stops reading these peers' inboxes. */
  readonly remove: (peerIds: ReadonlyArray<string>) => Effect.Effect<void>
  /**
   * Also reads the reply streams of these registrations, from their start (an answer written
   * before is not missed), each entry given as its peer's with `nonce` set. A registering peer
   * watches its registration's replies until it has its answer.
   */
  readonly addReplies: (
    replies: ReadonlyArray<{ readonly nonce: string; readonly peerId: string }>,
  ) => Effect.Effect<void, TransportError>
  /** Stops reading these registrations' reply streams. */
  readonly removeReplies: (nonces: ReadonlyArray<string>) => Effect.Effect<void>
  /**
   * Waits for news and returns all there is, each peer's entries in order and each entry once. A
   * failed read fails one `take` (once the entries read before it are taken); the fan keeps trying.
   */
  readonly take: Effect.Effect<ReadonlyArray<InboxBatch>, TransportError>
}

/** Orders stream ids ("ms-seq"), as Redis does. */
export const compareStreamIds = (a: string, b: string): number => {
  const [am = 0n, as = 0n] = a.split("-").map(BigInt)
  const [bm = 0n, bs = 0n] = b.split("-").map(BigInt)
  return am === bm ? Number(as - bs) : am < bm ? -1 : 1
}
