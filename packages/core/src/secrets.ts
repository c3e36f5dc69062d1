import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto"

/**
 * Tokens are 256-bit random secrets. They are stored and compared as SHA-256 hashes: a slow
 * password hash buys nothing for secrets with this much entropy. Comparisons run in constant time.
 */

/** A new secret, e.g. `picus_3q2+…`; the prefix says what it is when it turns up somewhere. */
export const newSecret = (kind: string): string => `${kind}_${randomBytes(32).toString("base64url")}`

/**
 * A session's token: an HMAC of its id under the cluster's session key. Nothing about it is stored;
 * any instance holding the key can check a peer's token and sign the jobs it sends.
 */
export const sessionTokenOf = (key: Uint8Array, sessionId: string): string =>
  `session_${createHmac("sha256", key).update(sessionId).digest("base64url")}`

/** A new random key (for the session key, say). */
export const newKey = (): Uint8Array => new Uint8Array(randomBytes(32))

export const hashSecret = (secret: string): Uint8Array =>
  new Uint8Array(createHash("sha256").update(secret).digest())

export const sameHash = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length && timingSafeEqual(a, b)

/** The part of a secret that is safe to show in listings: its kind and first characters. */
export const secretPrefix = (secret: string): string => secret.slice(0, secret.indexOf("_") + 9)

/**
 * The Redis password that goes with an enrollment token. Derived, so the enrollment string needs
 * only the token, and Redis never sees the token itself; Redis keeps the password's SHA-256
 * (`ACL SETUSER … #<hex>`), which PostgreSQL can keep too without holding a secret.
 */
export const redisPasswordOf = (token: string): string =>
  createHmac("sha256", token).update("picus redis password").digest("base64url")

/** SHA-256 in hex, the form Redis ACLs take a password hash in. */
export const redisPasswordHash = (password: string): string =>
  createHash("sha256").update(password).digest("hex")
