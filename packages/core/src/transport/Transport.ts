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

/** A stream entry delivered to a server through the consumer group; ack it once it is durable. */
export interface Delivery extends Envelope {
  /** True when it was taken over from another consumer that did not ack it (possibly a retry). */
  readonly redelivered: boolean
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
 * Durable paths (must not lose a message): the uplink (peer -> servers, consumer group) and
 * each peer's inbox (server -> peer). Lossy path: `publish`/`subscribe` (operator feed).
 */
export class Transport extends Context.Service<
  Transport,
  {
    /** Peer -> servers: append to the uplink. Returns the entry id. */
    readonly sendUplink: (payload: string) => Effect.Effect<string, TransportError>
    /**
     * Server side: a reader bound to one consumer name of the servers' group. `read` returns new
     * entries for this consumer (waiting up to blockMs); `reclaim` takes over entries that other
     * consumers left unacknowledged for at least minIdleMs (a dead instance's work).
     */
    readonly uplinkReader: (consumer: string) => Effect.Effect<UplinkReader, TransportError, Scope.Scope>
    /** Acknowledge uplink entries: they are durable and will not be delivered again. */
    readonly ackUplink: (ids: ReadonlyArray<string>) => Effect.Effect<void, TransportError>
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
  readonly read: (options: ReadOptions) => Effect.Effect<ReadonlyArray<Delivery>, TransportError>
  readonly reclaim: (
    minIdleMs: number,
    count: number,
  ) => Effect.Effect<ReadonlyArray<Delivery>, TransportError>
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
