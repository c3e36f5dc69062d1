import { createHmac, timingSafeEqual } from "node:crypto"
import { appendTrailer, splitTrailer } from "../protocol/envelope.ts"

/**
 * Peer -> server messages of a sealed session carry an HMAC under the session token (which only the
 * peer and the cluster know) instead of the token itself: whoever reads Redis learns nothing that lets
 * them speak for the peer. HMAC, not a signature: a server checks thousands of these a second.
 */

const macOf = (covered: string, sessionToken: string): Buffer =>
  createHmac("sha256", sessionToken).update(covered).digest()

export const macPayload = (payload: string, sessionToken: string): string =>
  appendTrailer(payload, "mac", macOf(payload, sessionToken).toString("base64url"))

export type MacCheck = "valid" | "missing" | "invalid"

export const checkMac = (payload: string, sessionToken: string): MacCheck => {
  const parts = splitTrailer(payload, "mac")
  if (parts === undefined) return "missing"
  const given = Buffer.from(parts.value, "base64url")
  const expected = macOf(parts.covered, sessionToken)
  return given.length === expected.length && timingSafeEqual(given, expected) ? "valid" : "invalid"
}
