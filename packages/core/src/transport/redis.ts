import { Effect, Layer, Queue, Stream } from "effect"
import { Redis } from "ioredis"
import { type Keys, makeKeys, UPLINK_GROUP } from "../keys.ts"
import { type Delivery, type Envelope, Transport, TransportError } from "./Transport.ts"

/**
 * Transport over Redis (ioredis). Streams carry what must not be lost; pub/sub what may be.
 *
 * Connections: one shared connection for plain commands; every blocking reader and the feed
 * subscriber get a connection of their own (a blocked XREAD holds its connection), closed with
 * the reader's scope.
 */

export interface RedisTransportOptions {
  /** redis://[user:pass@]host:port[/db]; the database index is honoured. */
  readonly url: string
  /** Key prefix (see keys.ts); tests use one per run. */
  readonly prefix?: string
}

type StreamReply = Array<[string, Array<[string, Array<string>]>]> | null

const PAYLOAD_FIELD = "m"

const fail = (operation: string) => (cause: unknown) =>
  new TransportError({ operation, message: cause instanceof Error ? cause.message : String(cause) })

const toEnvelope = ([id, fields]: [string, Array<string> | null]): Envelope | undefined => {
  if (!fields) return undefined
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === PAYLOAD_FIELD) return { id, payload: fields[i + 1]! }
  }
  // An entry without our field was not written by us: hand it on empty so the decoder rejects it.
  return { id, payload: "" }
}

const entriesOf = (reply: StreamReply): Array<Envelope> =>
  (reply?.[0]?.[1] ?? []).map(toEnvelope).filter((e): e is Envelope => e !== undefined)

/** The smallest stream id greater than `id`: XTRIM MINID keeps ids >= its argument. */
const nextStreamId = (id: string): string => {
  const [ms = "0", seq = "0"] = id.split("-")
  return `${ms}-${BigInt(seq) + 1n}`
}

// RESP2 keeps stream replies in their classic nested-array shape. A command waits through at
// most a few reconnect attempts, then fails with a TransportError that the caller retries.
const connect = (url: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const client = new Redis(url, { protocol: 2, maxRetriesPerRequest: 3 })
      // Connection errors surface as failed commands (TransportError); the event itself adds nothing.
      client.on("error", () => {})
      return client
    }),
    (client) => Effect.sync(() => client.disconnect()),
  )

const call = <A>(operation: string, run: () => Promise<A>) =>
  Effect.tryPromise({ try: run, catch: fail(operation) })

export const makeRedisTransport = Effect.fnUntraced(function* (options: RedisTransportOptions) {
  const keys: Keys = makeKeys(options.prefix)
  const client = yield* connect(options.url)

  const ensureGroup = (stream: string) =>
    call("xgroup create", () => client.xgroup("CREATE", stream, UPLINK_GROUP, "0", "MKSTREAM")).pipe(
      Effect.catchIf(
        (e) => e.message.includes("BUSYGROUP"),
        () => Effect.void,
      ),
    )

  /** Extends owner marks that are free or already the caller's; leaves other instances' marks. */
  const renewScript = `-- KEYS = {p}:peer:{peerId}:owner ...; ARGV[1] = serverId, ARGV[2] = ttl in ms
for _, key in ipairs(KEYS) do
  local owner = redis.call("GET", key)
  if not owner or owner == ARGV[1] then redis.call("SET", key, ARGV[1], "PX", ARGV[2]) end
end
return 0`

  /** Deletes an owner mark only if it is still the caller's (a newer owner's mark stays). */
  const releaseScript = `-- KEYS[1] = {p}:peer:{peerId}:owner; ARGV[1] = serverId
if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end
return 0`

  const claimFrom = (
    stream: string,
    serverId: string,
    minIdleMs: number,
    count: number,
    forwarded: boolean,
  ) =>
    call("xautoclaim", async () => {
      const reply = (await client.xautoclaim(
        stream,
        UPLINK_GROUP,
        serverId,
        minIdleMs,
        "0-0",
        "COUNT",
        count,
      )) as [string, Array<[string, Array<string> | null]>, Array<string>?]
      return reply[1]
        .map(toEnvelope)
        .filter((e): e is Envelope => e !== undefined)
        .map((e): Delivery => ({ ...e, redelivered: true, forwarded }))
    })

  // Acked entries are deleted too: these streams only ever hold unacknowledged work.
  const ackOn = (stream: string, ids: ReadonlyArray<string>) =>
    ids.length === 0
      ? Effect.void
      : call("xack", () =>
          client
            .multi()
            .xack(stream, UPLINK_GROUP, ...ids)
            .xdel(stream, ...ids)
            .exec(),
        ).pipe(Effect.asVoid)

  return Transport.of({
    sendUplink: (payload) =>
      call("xadd uplink", () => client.xadd(keys.uplink, "*", PAYLOAD_FIELD, payload)).pipe(
        Effect.map((id) => id ?? ""),
      ),

    uplinkReader: (serverId) =>
      Effect.gen(function* () {
        const own = keys.serverInbox(serverId)
        const ensureGroups = Effect.all([ensureGroup(keys.uplink), ensureGroup(own)], { discard: true })
        yield* ensureGroups
        const reader = yield* connect(options.url)
        return {
          // One XREADGROUP over both streams: the shared uplink and this instance's own.
          read: ({ count, blockMs }) =>
            call("xreadgroup", async () => {
              const block = blockMs > 0 ? ["BLOCK", blockMs] : []
              const reply = (await reader.call(
                "XREADGROUP",
                ...[
                  "GROUP",
                  UPLINK_GROUP,
                  serverId,
                  "COUNT",
                  count,
                  ...block,
                  "STREAMS",
                  keys.uplink,
                  own,
                  ">",
                  ">",
                ],
              )) as StreamReply
              return (reply ?? []).flatMap(([stream, entries]) =>
                entriesOf([[stream, entries]]).map(
                  (e): Delivery => ({ ...e, redelivered: false, forwarded: stream === own }),
                ),
              )
            }).pipe(
              // A Redis that restarted without persistence has lost the groups: make them again.
              Effect.tapError((e) =>
                e.message.includes("NOGROUP") ? ensureGroups.pipe(Effect.ignore) : Effect.void,
              ),
            ),
          reclaim: (minIdleMs, count) =>
            Effect.all([
              claimFrom(keys.uplink, serverId, minIdleMs, count, false),
              claimFrom(own, serverId, minIdleMs, count, true),
            ]).pipe(Effect.map(([shared, mine]) => [...shared, ...mine])),
          ack: (deliveries) =>
            Effect.all(
              [
                ackOn(
                  keys.uplink,
                  deliveries.filter((d) => !d.forwarded).map((d) => d.id),
                ),
                ackOn(
                  own,
                  deliveries.filter((d) => d.forwarded).map((d) => d.id),
                ),
              ],
              { discard: true },
            ),
        }
      }),

    forward: (serverId, payload) =>
      call("xadd server inbox", () =>
        client.xadd(keys.serverInbox(serverId), "*", PAYLOAD_FIELD, payload),
      ).pipe(Effect.asVoid),

    claimPeers: (serverId, peerIds, ttlMs, mode) =>
      peerIds.length === 0
        ? Effect.void
        : mode === "renew"
          ? call("renew owners", () =>
              client.eval(renewScript, peerIds.length, ...peerIds.map(keys.peerOwner), serverId, ttlMs),
            ).pipe(Effect.asVoid)
          : call("take owners", () => {
              const batch = client.pipeline()
              for (const peerId of peerIds) batch.set(keys.peerOwner(peerId), serverId, "PX", ttlMs)
              return batch.exec()
            }).pipe(Effect.asVoid),

    releasePeer: (peerId, serverId) =>
      call("release owner", () => client.eval(releaseScript, 1, keys.peerOwner(peerId), serverId)).pipe(
        Effect.asVoid,
      ),

    ownerOf: (peerId) =>
      call("get owner", () => client.get(keys.peerOwner(peerId))).pipe(
        Effect.map((owner) => owner ?? undefined),
      ),

    sendToPeer: (peerId, payload) =>
      call("xadd inbox", () => client.xadd(keys.peerInbox(peerId), "*", PAYLOAD_FIELD, payload)).pipe(
        Effect.map((id) => id ?? ""),
      ),

    inboxTail: (peerId) =>
      call("xrevrange inbox", () => client.xrevrange(keys.peerInbox(peerId), "+", "-", "COUNT", 1)).pipe(
        Effect.map((entries) => entries[0]?.[0] ?? "0-0"),
      ),

    inboxReader: (peerId) =>
      Effect.gen(function* () {
        const reader = yield* connect(options.url)
        const key = keys.peerInbox(peerId)
        return {
          read: (afterId, { count, blockMs }) =>
            call("xread inbox", async () => {
              const reply = (
                blockMs > 0
                  ? await reader.xread("COUNT", count, "BLOCK", blockMs, "STREAMS", key, afterId)
                  : await reader.xread("COUNT", count, "STREAMS", key, afterId)
              ) as StreamReply
              return entriesOf(reply)
            }),
        }
      }),

    trimInbox: (peerId, id) =>
      call("xtrim inbox", () => client.xtrim(keys.peerInbox(peerId), "MINID", nextStreamId(id))).pipe(
        Effect.asVoid,
      ),

    // Fire and forget: the feed is lossy by design, and waiting for Redis would slow the hot path.
    publish: (payload) =>
      Effect.sync(() => {
        client.publish(keys.events, payload).catch(() => {})
      }),

    subscribe: Stream.callback<string, TransportError>((queue) =>
      Effect.gen(function* () {
        const subscriber = yield* connect(options.url)
        subscriber.on("message", (_channel: string, message: string) => {
          Queue.offerUnsafe(queue, message)
        })
        yield* call("subscribe", () => subscriber.subscribe(keys.events))
      }),
    ),
  })
})

export const layerRedis = (options: RedisTransportOptions): Layer.Layer<Transport, TransportError> =>
  Layer.effect(Transport, makeRedisTransport(options))
