import { Result } from "effect"

/**
 * The enrollment string: what an operator hands a new peer, in one piece (as a Kubernetes join
 * command carries its token and the CA's hash). It holds the enrollment token, the cluster's public
 * key (which the peer pins before it trusts any message) and the Redis user an enrolling peer logs in
 * as (its password is derived from the token: see `redisPasswordOf`). It is a secret: it holds the token.
 *
 *   picus-enroll-1.<base64url of {"token":…,"cluster_key":…,"redis_user":…}>
 */

const PREFIX = "picus-enroll-1."

export interface Enrollment {
  readonly token: string
  /** base64url raw Ed25519 public key of the cluster. */
  readonly clusterKey: string
  /** Absent when the cluster runs without Redis users (the open mode). */
  readonly redisUser?: string
}

export const encodeEnrollment = (enrollment: Enrollment): string =>
  PREFIX +
  Buffer.from(
    JSON.stringify({
      token: enrollment.token,
      cluster_key: enrollment.clusterKey,
      ...(enrollment.redisUser === undefined ? {} : { redis_user: enrollment.redisUser }),
    }),
  ).toString("base64url")

export const isEnrollmentString = (text: string): boolean => text.trim().startsWith(PREFIX)

/** The enrollment in the string, or what is wrong with it (never quoting it: it holds a secret). */
export const decodeEnrollment = (text: string): Result.Result<Enrollment, string> => {
  const trimmed = text.trim()
  if (!trimmed.startsWith(PREFIX)) return Result.fail(`an enrollment string starts with "${PREFIX}"`)
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(trimmed.slice(PREFIX.length), "base64url").toString("utf8"))
  } catch {
    return Result.fail("the enrollment string is damaged (copy it again, whole)")
  }
  const o = parsed as Record<string, unknown> | null
  if (typeof o?.token !== "string" || typeof o.cluster_key !== "string") {
    return Result.fail("the enrollment string lacks its token or cluster key (copy it again, whole)")
  }
  if (o.redis_user !== undefined && typeof o.redis_user !== "string") {
    return Result.fail("the enrollment string has a malformed redis_user")
  }
  return Result.succeed({
    token: o.token,
    clusterKey: o.cluster_key,
    ...(typeof o.redis_user === "string" ? { redisUser: o.redis_user } : {}),
  })
}
