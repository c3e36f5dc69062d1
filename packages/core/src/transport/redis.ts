import { readFileSync } from "node:fs"
import type { ConnectionOptions } from "node:tls"
import { Clock, Effect, Layer, Queue, Scope, Stream } from "effect"
import { Redis, ReplyError } from "ioredis"
import { type Keys, makeKeys, UPLINK_GROUP } from "../keys.ts"
import { MAX_MESSAGE_BYTES } from "../protocol/limits.ts"
import { luaScript } from "./luaScripts.ts"
import {
  type DeadLetter,
  type Delivery,
  type Envelope,
  type InboxBatch,
  type InboxFan,
  type InboxFanOptions,
  MAX_DEAD_LETTERS,
  REPLY_TTL_MS,
  Transport,
  TransportError,
} from "./Transport.ts"

/**
 * Transport over Redis (ioredis). Streams carry what must not be lost; pub/sub what may be.
 *
 * Connections: one shared connection for plain commands; every blocking reader and the feed
 * subscriber get a connection of their own (a blocked XREAD holds its connection), closed with
 * the reader's scope.
 *
 * Peers push onto the uplink intake (a list: RPUSH is all their Redis users may do there); each
 * server instance's uplink reader moves the intake onto the uplink stream (lua/intake.lua), woken by
 * a blocking wait on the intake that takes nothing, and before each of its reads.
 */

/**
 * TLS for a rediss:// URL. Without a CA file the system's CAs verify the server's certificate.
 * Environment names (see `redisTlsFromEnv`): PICUS_REDIS_CA, PICUS_REDIS_SERVERNAME,
 * PICUS_REDIS_CERT, PICUS_REDIS_KEY.
 */
export interface RedisTlsOptions {
  /** PEM file of the CA that signed the server's certificate: then only that CA is trusted. */
  readonly caFile?: string
  /** The name the server's certificate must carry, when it is not the URL's host (an IP, say). */
  readonly servername?: string
  /** PEM files of a client certificate and its key, for a Redis that asks for one. */
  readonly certFile?: string
  readonly keyFile?: string
}

/** The TLS options of the environment; undefined when none is set. */
export const redisTlsFromEnv = (env: NodeJS.ProcessEnv = process.env): RedisTlsOptions | undefined => {
  const pick = (name: string) => {
    const value = env[name]?.trim()
    return value === undefined || value === "" ? undefined : value
  }
  const tls = {
    ...(pick("PICUS_REDIS_CA") ? { caFile: pick("PICUS_REDIS_CA")! } : {}),
    ...(pick("PICUS_REDIS_SERVERNAME") ? { servername: pick("PICUS_REDIS_SERVERNAME")! } : {}),
    ...(pick("PICUS_REDIS_CERT") ? { certFile: pick("PICUS_REDIS_CERT")! } : {}),
    ...(pick("PICUS_REDIS_KEY") ? { keyFile: pick("PICUS_REDIS_KEY")! } : {}),
  }
  return Object.keys(tls).length === 0 ? undefined : tls
}

export interface RedisTransportOptions {
  /** redis:// or rediss:// (TLS) [user:pass@]host:port[/db]; the database index is honoured. */
  readonly url: string
  /** The login, when not in the URL (a peer's session user); wins over the URL's. */
  readonly username?: string
  readonly password?: string
  /** Only with a rediss:// URL. */
  readonly tls?: RedisTlsOptions
  /**
   * The login may run only what a peer's or an enroller's Redis user may (keys.ts, peerAclRules):
   * then a connection sends nothing beyond AUTH (and SELECT for a /db index) on connect: no INFO
   * ready check, no CLIENT SETINFO. Such a transport serves the peer side only.
   */
  readonly restrictedLogin?: boolean
  /** Key prefix (see keys.ts); tests use one per run. */
  readonly prefix?: string
  /**
   * Told when Redis stops answering (with why, and when the next try is) and when it answers again:
   * once per change, and again every `remindEveryMs` while it stays away. Never given the URL, only
   * host and port, so no password reaches a log.
   */
  readonly onConnection?: (event: RedisConnectionEvent) => void
  /** Default 30 s. */
  readonly remindEveryMs?: number
  /**
   * What a command that gave up waiting for Redis tells the user to check, after where Redis was
   * sought and why it did not answer (default REDIS_HINT).
   */
  readonly unreachableHint?: string
}

/** Where the Redis URL is set, for every program of the project. */
export const REDIS_HINT = "set REDIS_URL or --redis-url"

export type RedisConnectionEvent =
  | {
      readonly _tag: "Unreachable"
      /** host:port */
      readonly address: string
      /** e.g. "connection refused" */
      readonly reason: string
      readonly retryInMs: number
      /** How long it has been away (0 the first time it is told). */
      readonly downForMs: number
    }
  | { readonly _tag: "Reachable"; readonly address: string; readonly downForMs: number }

const seconds = (ms: number) => `${Math.round(ms / 100) / 10}s`

/** A connection event as one line for a person, with a hint on what to check when Redis is away. */
export const describeConnection = (event: RedisConnectionEvent, hint: string): string =>
  event._tag === "Reachable"
    ? `Redis at ${event.address} is reachable again (after ${seconds(event.downForMs)})`
    : `${event.downForMs === 0 ? "cannot reach" : `still cannot reach (for ${seconds(event.downForMs)})`} Redis at ${event.address} (${event.reason}); retrying in ${seconds(event.retryInMs)} — ${hint}`

/** host:port of a Redis URL, without credentials. */
export const redisAddress = (url: string): string => {
  try {
    const parsed = new URL(url)
    return `${parsed.hostname || "127.0.0.1"}:${parsed.port || "6379"}`
  } catch {
    return "(an unreadable Redis URL)"
  }
}

const SOCKET_REASONS: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ECONNRESET: "connection reset",
  ETIMEDOUT: "timed out",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host name lookup failed",
  SELF_SIGNED_CERT_IN_CHAIN: "the server's certificate is not signed by a trusted CA (PICUS_REDIS_CA)",
  DEPTH_ZERO_SELF_SIGNED_CERT: "the server's certificate is self-signed and not trusted (PICUS_REDIS_CA)",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "the server's certificate is not signed by a trusted CA (PICUS_REDIS_CA)",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    "the server's certificate is not signed by a trusted CA (PICUS_REDIS_CA)",
  CERT_HAS_EXPIRED: "the server's certificate has expired",
  ERR_TLS_CERT_ALTNAME_INVALID: "the server's certificate does not name this host (PICUS_REDIS_SERVERNAME)",
}

/** Why a connection failed, in a few words and without secrets. */
const reasonOf = (error: unknown, url: string): string => {
  const code = (error as { code?: unknown } | undefined)?.code
  if (typeof code === "string" && SOCKET_REASONS[code]) return SOCKET_REASONS[code]
  let message = error instanceof Error ? error.message : String(error)
  try {
    const password = decodeURIComponent(new URL(url).password)
    if (password !== "") message = message.split(password).join("***")
  } catch {
    // No password to hide.
  }
  return message
}

/** Reconnect delays: 200 ms, doubled per try, at most 2 s. */
const reconnectDelay = (times: number) => Math.min(200 * 2 ** Math.min(times - 1, 10), 2_000)

/**
 * Follows every connection of one transport and tells of changes once for all of them (they fail
 * and come back together).
 */
const watchConnections = (options: RedisTransportOptions) => {
  const address = redisAddress(options.url)
  const remindEveryMs = options.remindEveryMs ?? 30_000
  const tell = options.onConnection ?? (() => {})
  let lastReason = "connection lost"
  let down: { readonly since: number; reason: string; toldAt: number } | undefined
  return {
    address,
    hint: options.unreachableHint ?? REDIS_HINT,
    lastReason: () => lastReason,
    error: (error: unknown) => {
      lastReason = reasonOf(error, options.url)
    },
    reconnecting: (retryInMs: number) => {
      const now = Date.now()
      if (down === undefined) {
        down = { since: now, reason: lastReason, toldAt: now }
      } else if (down.reason === lastReason && now - down.toldAt < remindEveryMs) {
        return
      }
      down.reason = lastReason
      down.toldAt = now
      tell({ _tag: "Unreachable", address, reason: lastReason, retryInMs, downForMs: now - down.since })
    },
    ready: () => {
      if (down === undefined) return
      const downForMs = Date.now() - down.since
      down = undefined
      tell({ _tag: "Reachable", address, downForMs })
    },
  }
}
type ConnectionWatch = ReturnType<typeof watchConnections>

type StreamReply = Array<[string, Array<[string, Array<string>]>]> | null

const PAYLOAD_FIELD = "m"

const RENEW_OWNERS = luaScript("renewOwners")
const RELEASE_OWNER = luaScript("releaseOwner")
const INBOX_NOTICE = luaScript("inboxNotice")
const INTAKE = luaScript("intake")
const INTAKE_AGE = luaScript("intakeAge")

/** One move takes at most this many intake entries, or this many bytes (Redis is held meanwhile). */
const MOVE_COUNT = 1000
const MOVE_BYTES = 4 * 1024 * 1024
/** The mover's blocking wait on the intake ends after this long (s) and starts again. */
const INTAKE_WAIT_S = 5
/** While the feed has no listeners, how often a lazy publish asks whether it has some now. */
const FEED_CHECK_MS = 1_000

/** What lua/intake.lua answers: moved, dropped, left on the intake, why an add was refused. */
type MoveReply = [number, number, number, string]
type IntakeScripts = {
  picusIntake: (...args: Array<string | number>) => Promise<MoveReply>
}

/** A Redis error reply starts with its code (NOGROUP, BUSYGROUP, NOPERM, ...): the error's type. */
const replyCode = (cause: unknown): string | undefined =>
  cause instanceof ReplyError ? (cause as Error).message.split(" ", 1)[0] : undefined

/** A command gave up waiting for a connection (ioredis's MaxRetriesPerRequestError). */
const gaveUp = (cause: unknown): boolean =>
  cause instanceof Error && cause.name === "MaxRetriesPerRequestError"

/** The watch of each connection, for `describeRedisFailure`. */
const watches = new WeakMap<Redis, ConnectionWatch>()

/**
 * A failed command's message: one that gave up waiting for Redis says where Redis was sought, why
 * it did not answer and what to set (`cannot reach Redis at host:port (connection refused); set
 * REDIS_URL or --redis-url`); any other says what Redis said.
 */
export const describeRedisFailure = (client: Redis, cause: unknown): string =>
  failureMessage(watches.get(client), cause)

const failureMessage = (watch: ConnectionWatch | undefined, cause: unknown): string => {
  if (gaveUp(cause) && watch !== undefined)
    return `cannot reach Redis at ${watch.address} (${watch.lastReason()}); ${watch.hint}`
  return cause instanceof Error ? cause.message : String(cause)
}

/** A command of a transport failed (see describeRedisFailure); its connections share one watch. */
const failAt = (watch: ConnectionWatch) => (operation: string) => (cause: unknown) =>
  new TransportError({
    operation,
    message: failureMessage(watch, cause),
    ...(replyCode(cause) === "NOGROUP" ? { reason: "no_group" as const } : {}),
    cause,
  })

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

const toDeadLetter = ([id, fields]: [string, Array<string>]): DeadLetter => {
  const field = (name: string) => {
    for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]!
    return ""
  }
  return {
    id,
    payload: field(PAYLOAD_FIELD),
    reason: field("reason"),
    attempts: Number(field("attempts")) || 0,
    sourceId: field("source"),
    serverId: field("server"),
    at: Number(id.split("-")[0]),
  }
}

/** The smallest stream id greater than `id`: XTRIM MINID keeps ids >= its argument. */
const nextStreamId = (id: string): string => {
  const [ms = "0", seq = "0"] = id.split("-")
  return `${ms}-${BigInt(seq) + 1n}`
}

/** A URL without its login, for when the login is given apart. */
const withoutLogin = (url: string): string => {
  try {
    const parsed = new URL(url)
    parsed.username = ""
    parsed.password = ""
    return parsed.toString()
  } catch {
    return url
  }
}

/** What every connection of a transport shares: login, TLS, what it sends on connect. */
interface SharedOptions {
  readonly tls?: ConnectionOptions
  readonly username?: string
  readonly password?: string
  readonly enableReadyCheck?: boolean
  readonly disableClientInfo?: boolean
}

const connectionOptions = (options: RedisTransportOptions): Effect.Effect<SharedOptions, TransportError> =>
  Effect.gen(function* () {
    const isTls = options.url.trim().toLowerCase().startsWith("rediss://")
    const tls = options.tls
    if (tls !== undefined && !isTls)
      return yield* new TransportError({
        operation: "tls",
        message:
          "TLS options (PICUS_REDIS_CA, PICUS_REDIS_SERVERNAME, PICUS_REDIS_CERT, PICUS_REDIS_KEY) are set but the Redis URL is redis://: use rediss://",
      })
    if (tls !== undefined && (tls.certFile === undefined) !== (tls.keyFile === undefined))
      return yield* new TransportError({
        operation: "tls",
        message:
          "a client certificate needs its key, and a key its certificate (PICUS_REDIS_CERT with PICUS_REDIS_KEY)",
      })
    const readPem = (file: string, what: string) =>
      Effect.try({
        try: () => readFileSync(file),
        catch: (cause) =>
          new TransportError({
            operation: "tls",
            message: `cannot read the ${what} file ${file}: ${cause instanceof Error ? cause.message : String(cause)}`,
            cause,
          }),
      })
    const tlsOptions = isTls
      ? {
          ...(tls?.caFile === undefined
            ? {}
            : { ca: yield* readPem(tls.caFile, "Redis CA (PICUS_REDIS_CA)") }),
          ...(tls?.servername === undefined ? {} : { servername: tls.servername }),
          ...(tls?.certFile === undefined
            ? {}
            : { cert: yield* readPem(tls.certFile, "Redis client certificate (PICUS_REDIS_CERT)") }),
          ...(tls?.keyFile === undefined
            ? {}
            : { key: yield* readPem(tls.keyFile, "Redis client key (PICUS_REDIS_KEY)") }),
        }
      : undefined
    return {
      ...(tlsOptions === undefined ? {} : { tls: tlsOptions }),
      ...(options.username === undefined ? {} : { username: options.username }),
      ...(options.password === undefined ? {} : { password: options.password }),
      ...(options.restrictedLogin === true ? { enableReadyCheck: false, disableClientInfo: true } : {}),
    }
  })

interface Connecting {
  readonly url: string
  readonly options: SharedOptions
  readonly watch: ConnectionWatch
}

/** How a transport's connections are made; fails (before any connects) on bad TLS settings. */
const connectingTo = (options: RedisTransportOptions): Effect.Effect<Connecting, TransportError> =>
  Effect.gen(function* () {
    const loginApart = options.username !== undefined || options.password !== undefined
    return {
      url: loginApart ? withoutLogin(options.url) : options.url,
      options: yield* connectionOptions(options),
      watch: watchConnections(options),
    }
  })

// RESP2 keeps stream replies in their classic nested-array shape. A command waits through at
// most a few reconnect attempts, then fails with a TransportError that the caller retries.
const connect = (to: Connecting, options: { readonly autoPipelining?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const { watch } = to
      const client = new Redis(to.url, {
        ...to.options,
        protocol: 2,
        maxRetriesPerRequest: 3,
        retryStrategy: reconnectDelay,
        enableAutoPipelining: options.autoPipelining ?? false,
      })
      // Failed commands surface as TransportErrors; the connection's state is told by the watch.
      client.on("error", watch.error)
      client.on("reconnecting", watch.reconnecting)
      client.on("ready", watch.ready)
      watches.set(client, watch)
      return client
    }),
    (client) => Effect.sync(() => client.disconnect()),
  )

/**
 * One connection with a transport's options (login, TLS, connection events), closed with the
 * scope: for a service beside the transport (RedisAcl, say).
 */
export const openRedisConnection = (options: RedisTransportOptions) =>
  connectingTo(options).pipe(Effect.flatMap((to) => connect(to)))

export const makeRedisTransport = Effect.fnUntraced(function* (options: RedisTransportOptions) {
  const keys: Keys = makeKeys(options.prefix)
  const to = yield* connectingTo(options)
  const fail = failAt(to.watch)
  const call = <A>(operation: string, run: () => Promise<A>) =>
    Effect.tryPromise({ try: run, catch: fail(operation) })
  // The shared connection sends the commands of one tick in one write: under load that is most of
  // the cost of talking to Redis (a system call per command otherwise).
  const client = yield* connect(to, { autoPipelining: true })
  /** Listeners of the operator feed, as last heard (see `publish`). */
  const feed = { listeners: 0, checkedAt: 0 }

  const ensureGroup = (stream: string) =>
    call("xgroup create", () => client.xgroup("CREATE", stream, UPLINK_GROUP, "0", "MKSTREAM")).pipe(
      Effect.catchIf(
        (e) => replyCode(e.cause) === "BUSYGROUP",
        () => Effect.void,
      ),
    )

  // The scripts are sent once per connection and called by their SHA from then on.
  client.defineCommand("picusRenewOwners", { lua: RENEW_OWNERS })
  client.defineCommand("picusReleaseOwner", { numberOfKeys: 1, lua: RELEASE_OWNER })
  client.defineCommand("picusIntakeAge", { numberOfKeys: 2, lua: INTAKE_AGE })
  client.defineCommand("picusInboxNotice", { numberOfKeys: 1, lua: INBOX_NOTICE })
  const scripts = client as unknown as {
    picusRenewOwners: (numKeys: number, ...args: Array<string | number>) => Promise<unknown>
    picusReleaseOwner: (key: string, serverId: string) => Promise<unknown>
    picusIntakeAge: (intake: string, since: string) => Promise<number>
    picusInboxNotice: (inbox: string, field: string, payload: string, ttlMs: number) => Promise<unknown>
  }

  // Defined before any command goes out: an auto-pipelined connection knows only the commands
  // defined when its pipeline was made.
  const withIntakeScript = (connection: Redis): Redis => {
    connection.defineCommand("picusIntake", { numberOfKeys: 4, lua: INTAKE })
    return connection
  }
  withIntakeScript(client)

  /** Moves what waits on the intake onto the uplink stream, over this connection. */
  const moveIntake = (connection: Redis): Promise<MoveReply> =>
    (connection as unknown as IntakeScripts).picusIntake(
      keys.uplinkIntake,
      keys.uplink,
      keys.intakeDropped,
      keys.intakeSince,
      MOVE_COUNT,
      MAX_MESSAGE_BYTES,
      MOVE_BYTES,
    )

  /**
   * Moves the intake onto the stream for as long as this reader lives: whenever it has entries, at
   * once (a blocking BLMOVE of the intake onto itself takes nothing and returns when something is
   * pushed). A failure is logged once per run of failures and tried again every second.
   */
  const runMover = Effect.gen(function* () {
    const waiter = yield* connect(to)
    let failing = false
    const turn = Effect.gen(function* () {
      const [, , left, refused] = yield* call("move intake", () => moveIntake(client))
      if (refused !== "") return yield* new TransportError({ operation: "move intake", message: refused })
      if (failing) {
        failing = false
        yield* Effect.logInfo("the uplink intake moves again")
      }
      if (left > 0) return
      yield* call("blmove intake", () =>
        waiter.call("BLMOVE", keys.uplinkIntake, keys.uplinkIntake, "LEFT", "LEFT", INTAKE_WAIT_S),
      )
    }).pipe(
      Effect.catch((e) =>
        Effect.gen(function* () {
          if (!failing) yield* Effect.logWarning(`cannot move the uplink intake (${e.message}); retrying`)
          failing = true
          yield* Effect.sleep("1 second")
        }),
      ),
    )
    yield* Effect.forkScoped(Effect.forever(turn))
  })

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

  /** Reads one stream (an inbox, a reply) on a connection of its own: its reads block. */
  const streamReader = (key: string) =>
    Effect.gen(function* () {
      const reader = yield* connect(to)
      return {
        read: (afterId: string, { count, blockMs }: { count: number; blockMs: number }) =>
          call("xread", async () => {
            const reply = (
              blockMs > 0
                ? await reader.xread("COUNT", count, "BLOCK", blockMs, "STREAMS", key, afterId)
                : await reader.xread("COUNT", count, "STREAMS", key, afterId)
            ) as StreamReply
            return entriesOf(reply)
          }),
      }
    })

  /**
   * One XREAD over up to `keysPerRead` inboxes per connection ("shard"); Redis answers with the
   * entries of every inbox that has some. A read does not see inboxes added while it blocks, so
   * `add` wakes it with CLIENT UNBLOCK (if that races the read, the short block bounds the delay).
   */
  const makeInboxFan = Effect.fnUntraced(function* (fanOptions: InboxFanOptions = {}) {
    const keysPerRead = fanOptions.keysPerRead ?? 1000
    const blockMs = fanOptions.blockMs ?? 250
    const count = fanOptions.count ?? 64
    const scope = yield* Effect.scope
    const queue = yield* Queue.unbounded<InboxBatch | TransportError>()
    interface Watched {
      readonly peerId: string
      cursor: string
      /** A registration's reply stream rather than the peer's inbox. */
      readonly nonce?: string
    }
    interface Shard {
      readonly inboxes: Map<string, Watched>
      /** The reader connection's CLIENT ID while a read is out (for CLIENT UNBLOCK), else undefined. */
      blockedAs: number | undefined
    }
    const shards: Array<Shard> = []
    const shardOf = new Map<string, Shard>()
    const replyShardOf = new Map<string, Shard>()
    let failed: TransportError | undefined

    const readLoop = (shard: Shard, reader: Redis) =>
      Effect.gen(function* () {
        let clientId: number | undefined
        // A reconnected connection has a new id.
        reader.on("ready", () => {
          clientId = undefined
        })
        while (true) {
          if (shard.inboxes.size === 0) {
            yield* Effect.sleep(blockMs)
            continue
          }
          if (clientId === undefined)
            clientId = (yield* call("client id", () => reader.client("ID"))) as number
          const id = clientId
          const reply = yield* call("xread inboxes", () => {
            const streams = [...shard.inboxes.keys()]
            const after = streams.map((key) => shard.inboxes.get(key)!.cursor)
            shard.blockedAs = id
            return reader.call(
              "XREAD",
              "COUNT",
              count,
              "BLOCK",
              blockMs,
              "STREAMS",
              ...streams,
              ...after,
            ) as Promise<StreamReply>
          }).pipe(
            Effect.ensuring(
              Effect.sync(() => {
                shard.blockedAs = undefined
              }),
            ),
          )
          for (const [key, raw] of reply ?? []) {
            const watched = shard.inboxes.get(key)
            if (!watched) continue // removed while the read was out
            const entries = entriesOf([[key, raw]])
            const last = entries.at(-1)
            if (!last) continue
            watched.cursor = last.id
            Queue.offerUnsafe(queue, {
              peerId: watched.peerId,
              entries,
              ...(watched.nonce === undefined ? {} : { nonce: watched.nonce }),
            })
          }
        }
      }).pipe(
        // Hand the failure to the consumer, wait, and read again from the same cursors.
        Effect.catch((e) => Queue.offer(queue, e).pipe(Effect.andThen(Effect.sleep("1 second")))),
        Effect.forever,
      )

    const openShard = Effect.gen(function* () {
      const reader = yield* connect(to)
      const shard: Shard = { inboxes: new Map(), blockedAs: undefined }
      shards.push(shard)
      yield* Effect.forkIn(readLoop(shard, reader), scope)
      return shard
    }).pipe(Scope.provide(scope))

    /** Best effort: a read that is not woken ends by itself within blockMs. */
    const wake = (woken: ReadonlySet<Shard>) => {
      for (const shard of woken) {
        if (shard.blockedAs === undefined) continue
        client.client("UNBLOCK", shard.blockedAs).catch(() => {})
      }
    }

    const fan: InboxFan = {
      add: (peerIds) =>
        Effect.gen(function* () {
          const fresh = [...new Set(peerIds)].filter((peerId) => !shardOf.has(peerId))
          if (fresh.length === 0) return
          // Each inbox is read after its newest entry, like inboxTail: one round trip for all.
          const tails = yield* call("xrevrange inboxes", () => {
            const batch = client.pipeline()
            for (const peerId of fresh) batch.xrevrange(keys.peerInbox(peerId), "+", "-", "COUNT", 1)
            return batch.exec()
          })
          const woken = new Set<Shard>()
          for (const [i, peerId] of fresh.entries()) {
            if (shardOf.has(peerId)) continue // added meanwhile by a concurrent add
            const [error, tail] = tails?.[i] ?? [new Error("no reply")]
            if (error) return yield* fail("xrevrange inboxes")(error)
            const cursor = (tail as Array<[string, Array<string>]>)[0]?.[0] ?? "0-0"
            let shard = shards.find((s) => s.inboxes.size < keysPerRead)
            if (!shard) shard = yield* openShard
            shard.inboxes.set(keys.peerInbox(peerId), { peerId, cursor })
            shardOf.set(peerId, shard)
            woken.add(shard)
          }
          wake(woken)
        }),
      addReplies: (replies) =>
        Effect.gen(function* () {
          const woken = new Set<Shard>()
          for (const { nonce, peerId } of replies) {
            if (replyShardOf.has(nonce)) continue
            let shard = shards.find((s) => s.inboxes.size < keysPerRead)
            if (!shard) shard = yield* openShard
            // A reply stream is new: read from its start, so an answer already there is taken.
            shard.inboxes.set(keys.reply(nonce), { peerId, cursor: "0-0", nonce })
            replyShardOf.set(nonce, shard)
            woken.add(shard)
          }
          wake(woken)
        }),
      removeReplies: (nonces) =>
        Effect.sync(() => {
          for (const nonce of nonces) {
            replyShardOf.get(nonce)?.inboxes.delete(keys.reply(nonce))
            replyShardOf.delete(nonce)
          }
        }),
      remove: (peerIds) =>
        Effect.sync(() => {
          for (const peerId of peerIds) {
            shardOf.get(peerId)?.inboxes.delete(keys.peerInbox(peerId))
            shardOf.delete(peerId)
          }
        }),
      take: Effect.gen(function* () {
        if (failed) {
          const error = failed
          failed = undefined
          return yield* error
        }
        const items = yield* Queue.takeAll(queue)
        const batches = items.filter((item): item is InboxBatch => !(item instanceof TransportError))
        const error = items.find((item) => item instanceof TransportError)
        if (batches.length > 0) {
          failed = error
          return batches
        }
        return yield* error!
      }),
    }
    return fan
  })

  return Transport.of({
    sendUplink: (payload) =>
      call("rpush uplink intake", () => client.rpush(keys.uplinkIntake, payload)).pipe(
        Effect.map((length) => String(length)),
      ),

    intakeDropped: call("get intake dropped", () => client.get(keys.intakeDropped)).pipe(
      Effect.map((count) => Number(count ?? 0) || 0),
    ),

    uplinkReader: (serverId) =>
      Effect.gen(function* () {
        const own = keys.serverInbox(serverId)
        const ensureGroups = Effect.all([ensureGroup(keys.uplink), ensureGroup(own)], { discard: true })
        yield* ensureGroups
        const reader = withIntakeScript(yield* connect(to))
        yield* runMover
        /** The stream an entry was read from. */
        const streamOf = (d: Delivery) =>
          !d.forwarded ? keys.uplink : d.fromServerId === undefined ? own : keys.serverInbox(d.fromServerId)
        return {
          // One XREADGROUP over both streams: the shared uplink and this instance's own.
          read: ({ count, blockMs }) =>
            call("xreadgroup", async () => {
              const block = blockMs > 0 ? ["BLOCK", blockMs] : []
              // What waits on the intake goes onto the stream first, in the same round trip, so a
              // read sees everything pushed before it. A failed move is the mover's to tell.
              moveIntake(reader).catch(() => {})
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
                e.reason === "no_group" ? ensureGroups.pipe(Effect.ignore) : Effect.void,
              ),
            ),
          reclaim: (minIdleMs, count) =>
            Effect.all([
              claimFrom(keys.uplink, serverId, minIdleMs, count, false),
              claimFrom(own, serverId, minIdleMs, count, true),
            ]).pipe(Effect.map(([shared, mine]) => [...shared, ...mine])),
          drainStreamOf: (lostServerId, count) =>
            Effect.gen(function* () {
              const stream = keys.serverInbox(lostServerId)
              if ((yield* call("exists", () => client.exists(stream))) === 0) return []
              yield* ensureGroup(stream)
              // Entries handled are deleted on ack, so whatever is pending is unhandled: claim it
              // at once (its consumer is gone), then read what was never delivered.
              const claimed = yield* claimFrom(stream, serverId, 0, count, true)
              const fresh = yield* call("xreadgroup lost stream", async () => {
                const reply = (await client.call(
                  "XREADGROUP",
                  ...["GROUP", UPLINK_GROUP, serverId, "COUNT", count, "STREAMS", stream, ">"],
                )) as StreamReply
                return entriesOf(reply).map((e): Delivery => ({ ...e, redelivered: true, forwarded: true }))
              })
              return [...claimed, ...fresh].map((d) => ({ ...d, fromServerId: lostServerId }))
            }),
          ack: (deliveries) => {
            const byStream = new Map<string, Array<string>>()
            for (const d of deliveries) {
              const stream = streamOf(d)
              byStream.set(stream, [...(byStream.get(stream) ?? []), d.id])
            }
            return Effect.forEach(byStream, ([stream, ids]) => ackOn(stream, ids), { discard: true })
          },
          deadLetter: (delivery, { reason, attempts }) =>
            call("dead letter", () => {
              const stream = streamOf(delivery)
              return client
                .multi()
                .xadd(
                  keys.deadLetters,
                  "MAXLEN",
                  "~",
                  MAX_DEAD_LETTERS,
                  "*",
                  PAYLOAD_FIELD,
                  delivery.payload,
                  "reason",
                  reason,
                  "attempts",
                  String(attempts),
                  "source",
                  delivery.id,
                  "server",
                  serverId,
                )
                .xack(stream, UPLINK_GROUP, delivery.id)
                .xdel(stream, delivery.id)
                .exec()
            }).pipe(Effect.asVoid),
        }
      }),

    // The stream's part, from its ids (the time an entry was moved onto it), and the intake's.
    uplinkBacklogMs: Effect.gen(function* () {
      const intake = yield* call("intake age", () =>
        scripts.picusIntakeAge(keys.uplinkIntake, keys.intakeSince),
      )
      const groups = (yield* call("xinfo groups", () =>
        client.call("XINFO", "GROUPS", keys.uplink).catch((error: unknown) => {
          // No uplink yet: nothing is waiting.
          if (error instanceof Error && error.message.includes("no such key")) return []
          throw error
        }),
      )) as Array<Array<string | number>>
      const group = groups.find((g) => g[g.indexOf("name") + 1] === UPLINK_GROUP)
      const lastDelivered = group ? String(group[group.indexOf("last-delivered-id") + 1]) : "0-0"
      const next = (yield* call("xrange", () =>
        client.xrange(keys.uplink, `(${lastDelivered}`, "+", "COUNT", 1),
      )) as Array<[string, Array<string>]>
      const [first] = next
      return Math.max(
        Number(intake) || 0,
        first ? Math.max(0, Date.now() - Number(first[0].split("-")[0])) : 0,
      )
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
              scripts.picusRenewOwners(peerIds.length, ...peerIds.map(keys.peerOwner), serverId, ttlMs),
            ).pipe(Effect.asVoid)
          : call("take owners", () => {
              const batch = client.pipeline()
              for (const peerId of peerIds) batch.set(keys.peerOwner(peerId), serverId, "PX", ttlMs)
              return batch.exec()
            }).pipe(Effect.asVoid),

    releasePeer: (peerId, serverId) =>
      call("release owner", () => scripts.picusReleaseOwner(keys.peerOwner(peerId), serverId)).pipe(
        Effect.asVoid,
      ),

    ownerOf: (peerId) =>
      call("get owner", () => client.get(keys.peerOwner(peerId))).pipe(
        Effect.map((owner) => owner ?? undefined),
      ),

    sendToPeer: (peerId, payload, sendOptions) => {
      const key = keys.peerInbox(peerId)
      switch (sendOptions?.lifetime) {
        case "notice":
          return call("xadd inbox notice", () =>
            scripts.picusInboxNotice(key, PAYLOAD_FIELD, payload, REPLY_TTL_MS),
          ).pipe(Effect.map((id) => String(id ?? "")))
        case "session":
          return call("xadd inbox", () =>
            client.multi().xadd(key, "*", PAYLOAD_FIELD, payload).persist(key).exec(),
          ).pipe(Effect.map((replies) => String(replies?.[0]?.[1] ?? "")))
        default:
          return call("xadd inbox", () => client.xadd(key, "*", PAYLOAD_FIELD, payload)).pipe(
            Effect.map((id) => id ?? ""),
          )
      }
    },

    // Issued together, so auto-pipelining sends them in one write, in order.
    sendManyToPeer: (peerId, payloads) =>
      payloads.length === 0
        ? Effect.succeed([])
        : call("xadd inbox", () => {
            const key = keys.peerInbox(peerId)
            return Promise.all(payloads.map((payload) => client.xadd(key, "*", PAYLOAD_FIELD, payload)))
          }).pipe(Effect.map((ids) => ids.map((id) => id ?? ""))),

    sendReply: (nonce, payload) =>
      call("xadd reply", () =>
        client
          .multi()
          .xadd(keys.reply(nonce), "*", PAYLOAD_FIELD, payload)
          .pexpire(keys.reply(nonce), REPLY_TTL_MS)
          .exec(),
      ).pipe(Effect.map((replies) => String(replies?.[0]?.[1] ?? ""))),

    replyReader: (nonce) => streamReader(keys.reply(nonce)),

    inboxTail: (peerId) =>
      call("xrevrange inbox", () => client.xrevrange(keys.peerInbox(peerId), "+", "-", "COUNT", 1)).pipe(
        Effect.map((entries) => entries[0]?.[0] ?? "0-0"),
      ),

    inboxReader: (peerId) => streamReader(keys.peerInbox(peerId)),

    trimInbox: (peerId, id) =>
      call("xtrim inbox", () => client.xtrim(keys.peerInbox(peerId), "MINID", nextStreamId(id))).pipe(
        Effect.asVoid,
      ),

    // One RPUSH: all or none, in order, so a retry sends no duplicates.
    sendUplinkBatch: (payloads) =>
      payloads.length === 0
        ? Effect.succeed([])
        : call("rpush uplink intake batch", () => client.rpush(keys.uplinkIntake, ...payloads)).pipe(
            Effect.map((length) => payloads.map((_, i) => String(length - payloads.length + i + 1))),
          ),

    inboxFan: (fanOptions) => makeInboxFan(fanOptions),

    trimInboxes: (upTo) =>
      upTo.length === 0
        ? Effect.void
        : call("xtrim inboxes", () => {
            const batch = client.pipeline()
            for (const [peerId, id] of upTo) batch.xtrim(keys.peerInbox(peerId), "MINID", nextStreamId(id))
            return batch.exec()
          }).pipe(Effect.asVoid),

    deadLetters: (count) =>
      call("xrange dead letters", () => client.xrange(keys.deadLetters, "-", "+", "COUNT", count)).pipe(
        Effect.map((entries) => entries.map(toDeadLetter)),
      ),

    // MULTI: a dead letter is back on the uplink or still a dead letter, never both or neither.
    retryDeadLetters: (ids) =>
      ids.length === 0
        ? Effect.succeed(0)
        : call("retry dead letters", async () => {
            let moved = 0
            for (const id of ids) {
              const [entry] = await client.xrange(keys.deadLetters, id, id)
              if (!entry) continue
              const letter = toDeadLetter(entry)
              await client
                .multi()
                .xadd(keys.uplink, "*", PAYLOAD_FIELD, letter.payload)
                .xdel(keys.deadLetters, id)
                .exec()
              moved++
            }
            return moved
          }),

    dropDeadLetters: (ids) =>
      ids.length === 0
        ? Effect.succeed(0)
        : call("xdel dead letters", () => client.xdel(keys.deadLetters, ...ids)),

    // Fire and forget: the feed is lossy by design, and waiting for Redis would slow the hot path.
    // What PUBLISH answers (how many heard it), or a PUBSUB NUMSUB once a second while nobody does,
    // says whether a lazy event is worth encoding.
    publish: (payload) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        if (typeof payload !== "string" && feed.listeners === 0) {
          if (now - feed.checkedAt < FEED_CHECK_MS) return
          feed.checkedAt = now
          client
            .call("PUBSUB", "NUMSUB", keys.events)
            .then((reply) => {
              feed.listeners = Number((reply as Array<unknown>)[1] ?? 0)
            })
            .catch(() => {})
          return
        }
        client
          .publish(keys.events, typeof payload === "string" ? payload : payload())
          .then((heard) => {
            feed.listeners = heard
            feed.checkedAt = now
          })
          .catch(() => {})
      }),

    subscribe: Stream.callback<string, TransportError>((queue) =>
      Effect.gen(function* () {
        feed.listeners = Math.max(feed.listeners, 1)
        const subscriber = yield* connect(to)
        subscriber.on("message", (_channel: string, message: string) => {
          Queue.offerUnsafe(queue, message)
        })
        // ioredis subscribes again after a reconnect: a feed open across an outage carries on.
        yield* call("subscribe", () => subscriber.subscribe(keys.events))
      }),
    ),
  })
})

export const layerRedis = (options: RedisTransportOptions): Layer.Layer<Transport, TransportError> =>
  Layer.effect(Transport, makeRedisTransport(options))
