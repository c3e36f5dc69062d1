import { Context, Effect, Layer, Schema } from "effect"

/** What a server without Redis users says at start, loudly. */
export const OPEN_MODE_WARNING =
  "open mode: no Redis users: anyone who can reach Redis can read, delay or drop every message, and a seed peer (which checks no signature) runs what it is sent"

/** Redis credentials a peer logs in with for one session (sealed to it in the acceptance). */
export interface RedisCredentials {
  readonly user: string
  readonly password: string
}

/** Redis refused to create or drop a user (the server's own Redis user may lack `+acl`). */
export class AccessError extends Schema.TaggedError<AccessError>()("AccessError", {
  operation: Schema.String,
  message: Schema.String,
  cause: Schema.optionalKey(Schema.Defect()),
}) {}

/**
 * Who may use Redis as which peer. With Redis users on, each session gets the peer's own Redis user
 * (a fresh password per session), limited to sending on the uplink and reading its own inbox; the
 * user goes when the session ends. In the open mode (the embedded dev setup), nobody gets one.
 */
export class PeerAccess extends Context.Service<
  PeerAccess,
  {
    /** Gives the peer its Redis user for this new session; undefined in the open mode. */
    readonly grant: (
      peerId: string,
      sessionId: string,
    ) => Effect.Effect<RedisCredentials | undefined, AccessError>
    /** The session ended: drops the peer's Redis user, unless a newer session of the peer holds it. */
    readonly release: (peerId: string, sessionId: string) => Effect.Effect<void>
  }
>()("@picus/server/PeerAccess") {
  /** No Redis users: every party shares the Redis login it was given (the open mode). */
  static readonly layerOpen = Layer.succeed(this, {
    grant: () => Effect.succeed(undefined),
    release: () => Effect.void,
  })
}
