import { SessionStore, type StoreError } from "@picus/core"
import { Effect, Option, Schema } from "effect"

/** Another live process runs under this server id. */
export class ServerIdInUse extends Schema.TaggedError<ServerIdInUse>()("ServerIdInUse", {
  serverId: Schema.String,
  message: Schema.String,
}) {}

/**
 * How long a start waits to see whether a recently alive instance of its id still is: one
 * keep-alive period (a third of the lease, as the gateway runs it) and a margin for a slow one.
 */
export const claimWaitMs = (leaseMs: number): number => {
  const keepAliveMs = leaseMs / 3
  return Math.round(keepAliveMs + Math.max(1_000, keepAliveMs / 2))
}

/**
 * Makes sure no other live process runs as `serverId` before this one starts as it. A row that
 * stopped cleanly, or has been silent for a lease (the others take that instance for lost), is
 * free. A row alive more recently may be a live process or one just killed (kill -9, then started
 * again at once): wait one keep-alive period and read it again. A live holder has said it is alive
 * meanwhile; a dead one has not, and its id is taken over. Two processes started within the same
 * moment on a free id are not told apart.
 */
export const claimServerId = (
  serverId: string,
  leaseMs: number,
): Effect.Effect<void, ServerIdInUse | StoreError, SessionStore> =>
  Effect.gen(function* () {
    const store = yield* SessionStore
    const before = yield* store.instanceStatus(serverId)
    if (Option.isNone(before) || before.value.stopped || before.value.aliveAgoMs >= leaseMs) return
    const waitMs = claimWaitMs(leaseMs)
    yield* Effect.logInfo(
      `server id ${serverId} was alive ${Math.round(before.value.aliveAgoMs)} ms ago and did not stop cleanly: checking for ${waitMs} ms that no other process runs as it`,
    )
    yield* Effect.sleep(waitMs)
    const after = yield* store.instanceStatus(serverId)
    if (Option.isSome(after) && !after.value.stopped && after.value.beat !== before.value.beat) {
      return yield* new ServerIdInUse({
        serverId,
        message: `another live server runs as ${serverId} (it said it was alive ${Math.round(after.value.aliveAgoMs)} ms ago): stop it, or give this one another --server-id / PICUS_SERVER_ID`,
      })
    }
  })
