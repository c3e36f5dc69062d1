import { Effect, Layer, PubSub, Stream } from "effect"
import { compareStreamIds, type Delivery, type Envelope, Transport } from "./Transport.ts"

/**
 * In-process transport with the same delivery rules as the Redis one: a consumer group over the
 * uplink (pending until acked, reclaimable after idling), durable per-peer inboxes, and a lossy
 * feed. Used by fast tests and the embedded single-process mode.
 */

interface Pending {
  readonly entry: Envelope
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
  const pending = new Map<string, Pending>()
  const uplinkSignal = makeSignal()

  const inboxes = new Map<string, Array<Envelope>>()
  const inboxSignal = makeSignal()
  const inbox = (peerId: string) => {
    let entries = inboxes.get(peerId)
    if (!entries) {
      entries = []
      inboxes.set(peerId, entries)
    }
    return entries
  }

  const feed = yield* PubSub.unbounded<string>()

  const takeNew = (consumer: string, count: number): Array<Delivery> => {
    const out: Array<Delivery> = []
    while (uplinkCursor < uplink.length && out.length < count) {
      const entry = uplink[uplinkCursor++]!
      pending.set(entry.id, { entry, consumer, deliveredAt: Date.now() })
      out.push({ ...entry, redelivered: false })
    }
    return out
  }

  const readAfter = (peerId: string, afterId: string, count: number) =>
    inbox(peerId)
      .filter((e) => compareStreamIds(e.id, afterId) > 0)
      .slice(0, count)

  return Transport.of({
    sendUplink: (payload) =>
      Effect.sync(() => {
        const id = nextId()
        uplink.push({ id, payload })
        uplinkSignal.notify()
        return id
      }),
    uplinkReader: (consumer) =>
      Effect.succeed({
        read: ({ count, blockMs }) =>
          Effect.gen(function* () {
            const now = takeNew(consumer, count)
            if (now.length > 0 || blockMs <= 0) return now
            yield* uplinkSignal.wait(blockMs)
            return takeNew(consumer, count)
          }),
        reclaim: (minIdleMs, count) =>
          Effect.sync(() => {
            const cutoff = Date.now() - minIdleMs
            const out: Array<Delivery> = []
            for (const p of pending.values()) {
              if (out.length >= count) break
              if (p.deliveredAt > cutoff) continue
              p.consumer = consumer
              p.deliveredAt = Date.now()
              out.push({ ...p.entry, redelivered: true })
            }
            return out
          }),
      }),
    ackUplink: (ids) =>
      Effect.sync(() => {
        for (const id of ids) pending.delete(id)
      }),
    sendToPeer: (peerId, payload) =>
      Effect.sync(() => {
        const id = nextId()
        inbox(peerId).push({ id, payload })
        inboxSignal.notify()
        return id
      }),
    inboxTail: (peerId) => Effect.sync(() => inbox(peerId).at(-1)?.id ?? "0-0"),
    inboxReader: (peerId) =>
      Effect.succeed({
        read: (afterId, { count, blockMs }) =>
          Effect.gen(function* () {
            const now = readAfter(peerId, afterId, count)
            if (now.length > 0 || blockMs <= 0) return now
            yield* inboxSignal.wait(blockMs)
            return readAfter(peerId, afterId, count)
          }),
      }),
    trimInbox: (peerId, id) =>
      Effect.sync(() => {
        inboxes.set(
          peerId,
          inbox(peerId).filter((e) => compareStreamIds(e.id, id) > 0),
        )
      }),
    publish: (payload) => PubSub.publish(feed, payload).pipe(Effect.asVoid),
    subscribe: Stream.fromPubSub(feed),
  })
})

export const layerMemory: Layer.Layer<Transport> = Layer.effect(Transport, makeMemoryTransport)
