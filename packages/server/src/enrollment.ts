import { Protocol, SessionStore, TokenStore, Transport, Trust } from "@picus/core"
import { Clock, Effect } from "effect"
import type { RedisCredentials } from "./access/PeerAccess.ts"
import type { RedisUsers } from "./access/RedisPeerAccess.ts"
import { createEnrollmentToken } from "./tokens.ts"

/**
 * What the operator's token commands do beyond the token itself: its Redis user (when the servers
 * run with Redis users: `users` given), the enrollment string, and at revocation the end of every
 * session it opened.
 */

/** The name written in the registration log for what an operator did from the command line. */
export const OPERATOR = "operator"

export interface CreatedToken {
  readonly secret: string
  readonly tokenId: number
  readonly name: string
  /** The enroll user's name; absent without Redis users. */
  readonly redisUser?: string
  /** What a new peer is given (token, cluster key, Redis user); absent without a cluster key. */
  readonly enrollment?: string
}

/** A new enrollment token, with its enroll user and enrollment string. */
export const createToken = Effect.fnUntraced(function* (
  name: string,
  options: { readonly users: RedisUsers | undefined; readonly clusterKey: string | undefined },
) {
  const { secret, info } = yield* createEnrollmentToken(name)
  const redisUser = options.users ? yield* options.users.createEnrollUser(info.tokenId, secret) : undefined
  const enrollment =
    options.clusterKey === undefined
      ? undefined
      : Trust.encodeEnrollment({
          token: secret,
          clusterKey: options.clusterKey,
          ...(redisUser === undefined ? {} : { redisUser }),
        })
  return {
    secret,
    tokenId: info.tokenId,
    name: info.name,
    ...(redisUser === undefined ? {} : { redisUser }),
    ...(enrollment === undefined ? {} : { enrollment }),
  } satisfies CreatedToken
})

/**
 * A seed peer provisioned by hand: a token that enrolls this peer id alone, and (with Redis users)
 * the peer's permanent Redis user. Both secrets are returned once.
 */
export const addSeedPeer = Effect.fnUntraced(function* (
  peerId: string,
  options: { readonly users: RedisUsers | undefined },
) {
  const { secret, info } = yield* createEnrollmentToken(`seed peer ${peerId}`, { peerId })
  const redis: RedisCredentials | undefined = options.users
    ? yield* options.users.provisionPeer(peerId, info.tokenId)
    : undefined
  return { secret, tokenId: info.tokenId, ...(redis === undefined ? {} : { redis }) }
})

/**
 * Revokes the tokens `idOrPrefix` names and, at once, ends every session they opened (logout
 * `revoked`; their holders let them go at their next keep-alive, fenced meanwhile) and drops their
 * Redis users (which closes their connections): the enroll user, a provisioned peer's, and those of
 * the sessions ended. Tells the operator feed. Returns what it did.
 */
export const revokeTokens = Effect.fnUntraced(function* (
  idOrPrefix: string,
  options: { readonly users: RedisUsers | undefined },
) {
  const tokens = yield* TokenStore
  const sessions = yield* SessionStore
  const tokenIds = yield* tokens.revokeToken(idOrPrefix)
  const ended = yield* sessions.endSessionsOfTokens({
    tokenIds,
    reason: Protocol.LogoutReason.revoked,
    serverId: OPERATOR,
  })
  const droppedUsers = options.users
    ? yield* options.users.dropUsersOf({ tokenIds, sessionIds: ended.map((s) => s.sessionId) })
    : []
  const transport = yield* Transport
  const at = yield* Clock.currentTimeMillis
  for (const s of ended)
    yield* transport.publish(() =>
      Protocol.encodeFeedEvent({
        event: "logged_out",
        at,
        server_id: OPERATOR,
        peer_id: s.peerId,
        reason: Protocol.LogoutReason.revoked,
      }),
    )
  return { tokenIds, ended, droppedUsers }
})
