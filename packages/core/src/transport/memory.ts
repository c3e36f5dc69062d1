import { Effect, Layer, PubSub, Queue, Stream } from "effect"
import { MAX_MESSAGE_BYTES } from "../protocol/limits.ts"
import {
  compareStreamIds,
  type DeadLetter,
  type Delivery,
  type Envelope,
  type InboxBatch,
  type InboxReader,
  MAX_DEAD_LETTERS,
  Transport,
  type TransportError,
} from "./Transport.ts"

/**
 * In-process transport with the same delivery rules as the Redis one: a consumer group over the
 * uplink (pending until acked, reclaimable after idling), durable per-peer inboxes, and a lossy
 * feed. Used by fast tests and the embedded single-process mode. The uplink's intake is moved the
 * moment something is pushed: a push lands on the uplink (or, over MAX_MESSAGE_BYTES, is dropped
 * and counted) at once.
 */

interface Pending {
  readonly entry: Envelope
  readonly forwarded: boolean
  consumer: string
  deliveredAt: number
}

/** Wakes every waiter when something is appended; waiters re-check their condition. */
const makeSignal = () => {
  let waiters: Array<() => void> = []
  return {
    notify: () => {
      const woken = waiters
      waiters = []
      for (const wake of woken) wake()
    },
    wait: (ms: number) =>
      Effect.callback<void>((resume) => {
        const wake = () => {
          clearTimeout(timer)
          resume(Effect.void)
        }
        const timer = setTimeout(() => {
          waiters = waiters.filter((w) => w !== wake)
          resume(Effect.void)
        }, ms)
        waiters.push(wake)
        return Effect.sync(() => {
          clearTimeout(timer)
          waiters = waiters.filter((w) => w !== wake)
        })
      }),
  }
}

export const makeMemoryTransport = Effect.gen(function* () {
  // Ids are "ms-seq" like Redis's, and strictly increasing even if the clock steps back.
  let lastMs = 0
  let seq = 0
  const nextId = () => {
    lastMs = Math.max(lastMs, Date.now())
    return `${lastMs}-${seq++}`
  }

  const uplink: Array<Envelope> = []
  let uplinkCursor = 0
  /** Each server instance's own stream of forwarded messages (read by that instance only). */
  const direct = new Map<string, Array<Envelope>>()
  const pending = new Map<string, Pending>()
  const uplinkSignal = makeSignal()
  const owners = new Map<string, { readonly serverId: string; readonly until: number }>()

  const inboxes = new Map<string, Array<Envelope>>()
  const inboxSignal = makeSignal()
  /** Inbox fans, told which peer's inbox just grew. */
  const fanListeners = new Set<(peerId: string) => void>()
  const inbox = (peerId: string) => {
    let entries = inboxes.get(peerId)
    if (!entries) {
      entries = []
      inboxes.set(peerId, entries)
    }
    return entries
  }

  const feed = yield* PubSub.unbounded<string>()
  let dead: Array<DeadLetter> = []
  let dropped = 0
  /** What a push onto the intake becomes: an uplink entry, or a dropped one. Its receipt. */
  const intake = (payload: string): string => {
    if (Buffer.byteLength(payload, "utf8") > MAX_MESSAGE_BYTES) dropped++
    else uplink.push({ id: nextId(), payload })
    return String(uplink.length - uplinkCursor)
  }

  const deliver = (entry: Envelope, consumer: string, forwarded: boolean): Delivery => {
    pending.set(entry.id, { entry, forwarded, consumer, deliveredAt: Date.now() })
    return { ...entry, redelivered: false, forwarded }
  }

  const takeNew = (serverId: string, count: number): Array<Delivery> => {
    const out: Array<Delivery> = []
    while (uplinkCursor < uplink.length && out.length < count)
      out.push(deliver(uplink[uplinkCursor++]!, serverId, false))
    const mine = direct.get(serverId) ?? []
    while (mine.length > 0 && out.length < count) out.push(deliver(mine.shift()!, serverId, true))
    return out
  }

  const readAfter = (peerId: string, afterId: string, count: number) =>
    inbox(peerId)
      .filter((e) => compareStreamIds(e.id, afterId) > 0)
      .slice(0, count)

  const replyBox = (nonce: string) => `\u0000reply:${nonce}`
  const streamReader = (box: string): InboxReader => ({
    read: (afterId, { count, blockMs }) =>
      Effect.gen(function* () {
        const now = readAfter(box, afterId, count)
        if (now.length > 0 || blockMs <= 0) return now
        yield* inboxSignal.wait(blockMs)
        return readAfter(box, afterId, count)
      }),
  })

  return Transport.of({
    sendUplink: (payload) =>
      Effect.sync(() => {
        const receipt = intake(payload)
        uplinkSignal.notify()
        return receipt
      }),
    intakeDropped: Effect.sync(() => dropped),
    uplinkReader: (serverId) =>
      Effect.succeed({
        read: ({ count, blockMs }) =>
          Effect.gen(function* () {
            const now = takeNew(serverId, count)
            if (now.length > 0 || blockMs <= 0) return now
            yield* uplinkSignal.wait(blockMs)
            return takeNew(serverId, count)
          }),
        // Shared entries of any consumer, and this instance's own forwarded ones.
        reclaim: (minIdleMs, count) =>
          Effect.sync(() => {
            const cutoff = Date.now() - minIdleMs
            const out: Array<Delivery> = []
            for (const p of pending.values()) {
              if (out.length >= count) break
              if (p.deliveredAt > cutoff || (p.forwarded && p.consumer !== serverId)) continue
              p.consumer = serverId
              p.deliveredAt = Date.now()
              out.push({ ...p.entry, redelivered: true, forwarded: p.forwarded })
            }
            return out
          }),
        drainStreamOf: (lostServerId, count) =>
          Effect.sync(() => {
            const out: Array<Delivery> = []
            for (const p of pending.values()) {
              if (out.length >= count) break
              if (!p.forwarded || p.consumer !== lostServerId) continue
              p.consumer = serverId
              p.deliveredAt = Date.now()
              out.push({ ...p.entry, redelivered: true, forwarded: true, fromServerId: lostServerId })
            }
            const left = direct.get(lostServerId) ?? []
            while (left.length > 0 && out.length < count) {
              out.push({ ...deliver(left.shift()!, serverId, true), fromServerId: lostServerId })
            }
            return out
          }),
        ack: (deliveries) =>
          Effect.sync(() => {
            for (const d of deliveries) pending.delete(d.id)
          }),
        deadLetter: (delivery, { reason, attempts }) =>
          Effect.sync(() => {
            pending.delete(delivery.id)
            const id = nextId()
            dead.push({
              id,
              payload: delivery.payload,
              reason,
              attempts,
              sourceId: delivery.id,
              serverId,
              at: Number(id.split("-")[0]),
            })
            if (dead.length > MAX_DEAD_LETTERS) dead.shift()
          }),
      }),
    uplinkBacklogMs: Effect.sync(() => {
      const next = uplink[uplinkCursor]
      return next ? Math.max(0, Date.now() - Number(next.id.split("-")[0])) : 0
    }),
    forward: (serverId, payload) =>
      Effect.sync(() => {
        const entries = direct.get(serverId) ?? []
        entries.push({ id: nextId(), payload })
        direct.set(serverId, entries)
        uplinkSignal.notify()
      }),
    claimPeers: (serverId, peerIds, ttlMs, mode) =>
      Effect.sync(() => {
        for (const peerId of peerIds) {
          const current = owners.get(peerId)
          const free = !current || current.until <= Date.now() || current.serverId === serverId
          if (mode === "take" || free) owners.set(peerId, { serverId, until: Date.now() + ttlMs })
        }
      }),
    releasePeer: (peerId, serverId) =>
      Effect.sync(() => {
        if (owners.get(peerId)?.serverId === serverId) owners.delete(peerId)
      }),
    ownerOf: (peerId) =>
      Effect.sync(() => {
        const owner = owners.get(peerId)
        return owner && owner.until > Date.now() ? owner.serverId : undefined
      }),
    // Inboxes never expire here: `lifetime` changes nothing.
    sendToPeer: (peerId, payload) =>
      Effect.sync(() => {
        const id = nextId()
        inbox(peerId).push({ id, payload })
        inboxSignal.notify()
        for (const listener of fanListeners) listener(peerId)
        return id
      }),
    sendManyToPeer: (peerId, payloads) =>
      Effect.sync(() => {
        const ids = payloads.map((payload) => {
          const id = nextId()
          inbox(peerId).push({ id, payload })
          return id
        })
        inboxSignal.notify()
        for (const listener of fanListeners) listener(peerId)
        return ids
      }),
    // Replies live beside the inboxes under a name no peer id can take (ids carry no NUL); they
    // do not expire here.
    sendReply: (nonce, payload) =>
      Effect.sync(() => {
        const id = nextId()
        inbox(replyBox(nonce)).push({ id, payload })
        inboxSignal.notify()
        for (const listener of fanListeners) listener(replyBox(nonce))
        return id
      }),
    replyReader: (nonce) => Effect.succeed(streamReader(replyBox(nonce))),
    inboxTail: (peerId) => Effect.sync(() => inbox(peerId).at(-1)?.id ?? "0-0"),
    inboxReader: (peerId) => Effect.succeed(streamReader(peerId)),
    trimInbox: (peerId, id) =>
      Effect.sync(() => {
        inboxes.set(
          peerId,
          inbox(peerId).filter((e) => compareStreamIds(e.id, id) > 0),
        )
      }),
    sendUplinkBatch: (payloads) =>
      Effect.sync(() => {
        const receipts = payloads.map(intake)
        uplinkSignal.notify()
        return receipts
      }),
    // Delivered as the server appends, so each peer's entries reach the queue in inbox order.
    inboxFan: () =>
      Effect.gen(function* () {
        const queue = yield* Queue.unbounded<InboxBatch, TransportError>()
        /** By box (a peer's inbox, or a reply box): whose it is, and where its reading is. */
        const watched = new Map<string, { peerId: string; cursor: string; nonce?: string }>()
        const pull = (box: string) => {
          const w = watched.get(box)
          if (w === undefined) return
          const entries = readAfter(box, w.cursor, Number.POSITIVE_INFINITY)
          const last = entries.at(-1)
          if (!last) return
          w.cursor = last.id
          Queue.offerUnsafe(queue, {
            peerId: w.peerId,
            entries,
            ...(w.nonce === undefined ? {} : { nonce: w.nonce }),
          })
        }
        fanListeners.add(pull)
        yield* Effect.addFinalizer(() => Effect.sync(() => fanListeners.delete(pull)))
        return {
          add: (peerIds) =>
            Effect.sync(() => {
              for (const peerId of peerIds)
                if (!watched.has(peerId))
                  watched.set(peerId, { peerId, cursor: inbox(peerId).at(-1)?.id ?? "0-0" })
            }),
          remove: (peerIds) =>
            Effect.sync(() => {
              for (const peerId of peerIds) watched.delete(peerId)
            }),
          addReplies: (replies) =>
            Effect.sync(() => {
              for (const { nonce, peerId } of replies) {
                const box = replyBox(nonce)
                if (watched.has(box)) continue
                watched.set(box, { peerId, cursor: "0-0", nonce })
                pull(box)
              }
            }),
          removeReplies: (nonces) =>
            Effect.sync(() => {
              for (const nonce of nonces) watched.delete(replyBox(nonce))
            }),
          take: Queue.takeAll(queue),
        }
      }),
    trimInboxes: (upTo) =>
      Effect.sync(() => {
        for (const [peerId, id] of upTo)
          inboxes.set(
            peerId,
            inbox(peerId).filter((e) => compareStreamIds(e.id, id) > 0),
          )
      }),
    deadLetters: (count) => Effect.sync(() => dead.slice(0, count)),
    retryDeadLetters: (ids) =>
      Effect.sync(() => {
        let moved = 0
        for (const id of ids) {
          const at = dead.findIndex((d) => d.id === id)
          if (at < 0) continue
          const [letter] = dead.splice(at, 1)
          uplink.push({ id: nextId(), payload: letter!.payload })
          moved++
        }
        if (moved > 0) uplinkSignal.notify()
        return moved
      }),
    dropDeadLetters: (ids) =>
      Effect.sync(() => {
        const before = dead.length
        dead = dead.filter((d) => !ids.includes(d.id))
        return before - dead.length
      }),
    publish: (payload) =>
      PubSub.publish(feed, typeof payload === "string" ? payload : payload()).pipe(Effect.asVoid),
    subscribe: Stream.fromPubSub(feed),
  })
})

export const layerMemory: Layer.Layer<Transport> = Layer.effect(Transport, makeMemoryTransport)
