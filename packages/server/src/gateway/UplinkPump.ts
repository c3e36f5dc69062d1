import { type Delivery, Protocol, Store, Transport, type UplinkReader } from "@picus/core"
import { Cause, Clock, Effect, Exit, Fiber, Result, Scope, type Semaphore } from "effect"
import type { GatewayConfig } from "./config.ts"
import type { Hearing } from "./Hearing.ts"
import type { LeaseKeeper } from "./LeaseKeeper.ts"
import { judge } from "./Poison.ts"
import { makeRateLimitedLog } from "./RateLimitedLog.ts"
import type { EntryOutcome } from "./ResultRecorder.ts"
import type { PreparedBatch } from "./Router.ts"
import type { SessionRegistry } from "./SessionRegistry.ts"

/** A read blocks at most this long when Redis answers. */
export const READ_BLOCK_MS = 1_000

/**
 * Batches in hand at once: the next is read and handled while the last one's statement runs, when
 * the two share no peer. A takeover or a shutdown takes every permit of the batch lock.
 */
export const BATCHES_IN_FLIGHT = 2

interface Retrying {
  readonly delivery: Delivery
  /** Tries that count towards maxAttempts (failures not known to be passing). */
  tries: number
  /** Failures in all, passing ones included: the backoff grows with them. */
  failures: number
  dueAt: number
}

/**
 * Reads the uplink (with this instance's own stream, the entries it takes over and those left in
 * lost instances' streams), hands each batch to the router, and acknowledges what is done once it
 * is committed. An entry that failed is tried again after a backoff; a passing failure (PostgreSQL
 * away) as often as it takes, any other at most maxAttempts times, and one the database refuses not
 * again: it is set aside as a dead letter with its reason, and a result's ticket ends failed.
 */
export const makeUplinkPump = Effect.fnUntraced(function* (deps: {
  readonly config: GatewayConfig
  readonly reader: UplinkReader
  readonly hearing: Hearing
  readonly registry: SessionRegistry
  readonly leaseKeeper: LeaseKeeper
  readonly prepare: (batch: ReadonlyArray<Delivery>) => PreparedBatch
  /**
   * One permit held while a batch is handled (BATCHES_IN_FLIGHT in all): shutdown takes them all to
   * see every session a batch may be opening.
   */
  readonly batchLock: Semaphore.Semaphore
}) {
  const { config, reader, hearing, registry, leaseKeeper } = deps
  const store = yield* Store
  const transport = yield* Transport
  const scope = yield* Scope.Scope
  const maxAttempts = config.maxAttempts ?? 5
  const retryBaseMs = config.retryBaseMs ?? 1_000
  const retryMaxMs = config.retryMaxMs ?? 5_000
  const failureLog = makeRateLimitedLog()
  const retrying = new Map<string, Retrying>()
  let lastReclaim = 0
  let backlogCheckedAt = 0
  let sharedLag = 0
  let redisEmptied = false

  const everySession = <E>(f: (s: ReturnType<SessionRegistry["all"]>[number]) => Effect.Effect<void, E>) =>
    Effect.forEach(registry.all(), f, { discard: true })

  /** Sets an entry aside; a result's ticket (of the sending peer only) ends failed with the reason. */
  const deadLetter = (entry: Delivery, reason: string, attempts: number) =>
    Effect.gen(function* () {
      yield* reader.deadLetter(entry, { reason, attempts })
      const decoded = Protocol.decodePeerMessage(entry.payload)
      const message = Result.isSuccess(decoded) ? decoded.success : undefined
      if (message?.msg === "result") {
        yield* store.closeTickets(
          [message.ticket],
          "failed",
          `result not recorded: ${reason}`,
          message.peer_id,
        )
      }
      yield* failureLog(
        "dead-letter",
        `set aside uplink entry ${entry.id} as a dead letter (${message?.msg ?? "?"}${
          message ? ` of ${message.peer_id}` : ""
        }): ${reason}`,
      )
    })

  const settle = Effect.fnUntraced(function* (outcomes: ReadonlyMap<Delivery, EntryOutcome>) {
    const now = yield* Clock.currentTimeMillis
    const done: Array<Delivery> = []
    for (const [entry, outcome] of outcomes) {
      const previous = retrying.get(entry.id)
      if (Exit.isSuccess(outcome)) {
        retrying.delete(entry.id)
        done.push(entry)
        continue
      }
      const tries = (previous?.tries ?? (entry.redelivered ? 1 : 0)) + 1
      const failures = (previous?.failures ?? 0) + 1
      const decision = judge(outcome.cause, tries, maxAttempts)
      if (decision._tag === "deadLetter") {
        retrying.delete(entry.id)
        yield* deadLetter(entry, decision.reason, tries).pipe(
          Effect.catch((e) =>
            Effect.sync(() => {
              // Could not set it aside (Redis away): it stays pending, and is judged again.
              retrying.set(entry.id, { delivery: entry, tries, failures, dueAt: now + retryMaxMs })
            }).pipe(Effect.andThen(Effect.logWarning(`could not set an entry aside: ${e.message}`))),
          ),
        )
        continue
      }
      const backoff = Math.min(retryMaxMs, retryBaseMs * 2 ** (failures - 1))
      retrying.set(entry.id, {
        delivery: entry,
        tries: decision._tag === "retry" ? tries : tries - 1,
        failures,
        dueAt: now + backoff,
      })
      yield* failureLog(
        `retry:${decision._tag}`,
        `could not handle uplink entry ${entry.id}; trying again in ${backoff} ms: ${
          Cause.pretty(outcome.cause).split("\n")[0]
        }`,
      )
    }
    // What is done is committed: the acknowledgement need not hold up the next read. One that fails
    // leaves its entries pending, to be handled again (harmlessly) after the reclaim delay.
    if (done.length > 0) {
      yield* reader.ack(done).pipe(
        Effect.catch((error) => Effect.logWarning(`could not acknowledge: ${error.message}`)),
        Effect.forkIn(scope),
      )
    }
  })

  /** The batch being handled while the next is read, if any: its peers, its entries, its fiber. */
  let inFlight:
    | {
        readonly peers: ReadonlySet<string>
        readonly exclusive: boolean
        readonly ids: ReadonlySet<string>
        readonly fiber: Fiber.Fiber<void>
      }
    | undefined

  /** The batch still being handled, if one is. */
  const handling = () => (inFlight?.fiber.pollUnsafe() === undefined ? inFlight : undefined)

  /** Entries already in hand (retrying, in this batch, or in the one still handled) are not taken a second time. */
  const fresh = (taken: ReadonlyArray<Delivery>, batch: ReadonlyArray<Delivery>) => {
    const inHand = new Set([...retrying.keys(), ...batch.map((d) => d.id), ...(handling()?.ids ?? [])])
    return taken.filter((d) => !inHand.has(d.id))
  }

  let lastReadAt: number | undefined
  let lagMs = 0
  const turn = Effect.gen(function* () {
    // A batch that died (a defect) fails the pump now, not at the next batch, which may be long.
    const before = inFlight?.fiber
    const ended = before?.pollUnsafe()
    if (before !== undefined && ended !== undefined && Exit.isFailure(ended)) yield* Fiber.join(before)
    const start = yield* Clock.currentTimeMillis
    hearing.readStarted(start)
    let batch = yield* reader.read({
      count: config.batchSize,
      blockMs: retrying.size > 0 ? 200 : READ_BLOCK_MS,
    })
    const lastRead = yield* Clock.currentTimeMillis
    lastReadAt = lastRead
    if (hearing.readSucceeded(lastRead) || redisEmptied) {
      yield* Effect.logInfo(`Redis is back: ${registry.size()} session(s) get a fresh grace period`)
      yield* everySession((s) => s.heartbeat)
    }
    if (redisEmptied) {
      // The jobs in the peers' inboxes and the results on their way are gone with it: send every
      // ticket in flight again. A peer never runs one twice; it answers from what it kept.
      redisEmptied = false
      yield* Effect.logWarning("Redis came back without its data: sending the jobs in flight again")
      yield* everySession((s) => s.resendInFlight)
    }
    const last = batch.at(-1)
    const ownLag =
      batch.length >= config.batchSize && last ? Math.max(0, lastRead - Number(last.id.split("-")[0])) : 0
    // The heartbeats of this instance's peers may wait in the uplink behind another instance's
    // backlog: how far behind all of them are counts too (looked up once a second).
    if (lastRead - backlogCheckedAt >= 1_000) {
      backlogCheckedAt = lastRead
      sharedLag = yield* transport.uplinkBacklogMs.pipe(Effect.orElseSucceed(() => 0))
    }
    lagMs = Math.max(ownLag, sharedLag)
    if (hearing.behind(ownLag, sharedLag)) {
      // Caught up: every session gets a full grace period from now, as after a Redis outage.
      yield* everySession((s) => s.heartbeat)
    }
    for (const serverId of leaseKeeper.takeDrainDue()) {
      const left = fresh(yield* reader.drainStreamOf(serverId, config.batchSize), batch)
      if (left.length === 0) continue
      yield* Effect.logInfo(`took over ${left.length} message(s) forwarded to ${serverId}, which is lost`)
      batch = [...left, ...batch]
    }
    const due = [...retrying.values()].filter((r) => r.dueAt <= lastRead).map((r) => r.delivery)
    batch = [...due, ...batch.filter((d) => !retrying.has(d.id))]
    if (lastRead - lastReclaim > config.reclaimIdleMs / 2) {
      lastReclaim = lastRead
      const reclaimed = fresh(yield* reader.reclaim(config.reclaimIdleMs, config.batchSize), batch)
      if (reclaimed.length > 0) {
        yield* Effect.logInfo(`took over ${reclaimed.length} pending message(s)`)
        batch = [...reclaimed, ...batch]
      }
    }
    if (batch.length === 0) return
    const prepared = deps.prepare(batch)
    const previous = handling()
    // A peer's messages in order: a batch that shares a peer with the one in hand waits for it; so
    // does any batch beside one that opens or closes sessions (a notice for a session being opened
    // must find it).
    if (
      previous !== undefined &&
      (previous.exclusive || prepared.exclusive || [...prepared.peers].some((p) => previous.peers.has(p)))
    ) {
      yield* Fiber.join(previous.fiber)
    }
    const fiber = yield* deps.batchLock
      .withPermits(1)(prepared.run)
      .pipe(Effect.flatMap(settle), Effect.forkIn(scope))
    inFlight = {
      peers: prepared.peers,
      exclusive: prepared.exclusive,
      ids: new Set(batch.map((d) => d.id)),
      fiber,
    }
    // At most two in hand: the next read waits for the one before this.
    if (previous !== undefined) yield* Fiber.join(previous.fiber)
  }).pipe(
    Effect.catch((error) =>
      Effect.gen(function* () {
        // The consumer groups are gone: Redis restarted without persistence.
        if (error.reason === "no_group") redisEmptied = true
        // Deaf from now, and a fresh grace period once a read succeeds.
        hearing.readFailed()
        yield* Effect.logError(`uplink: ${error.message}; retrying`)
        yield* Effect.sleep("1 second")
      }),
    ),
  )

  return {
    turn,
    retrying: () => retrying.size,
    /** When the uplink last answered a read, and how far behind the newest entry it was then. */
    reading: () => ({ lastReadAt, lagMs }),
  }
})
