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

/**
 * Server -> peer messages of a sealed session (jobs, heartbeats, shutdown) carry an HMAC under a key
 * derived from the session token for that direction, in place of the cluster key's signature: an
 * Ed25519 signature costs the server about 50 microseconds a message and the peer three times that
 * to check, an HMAC a few. Only the peer and the cluster hold the token; the derived key keeps a
 * peer's own MACed messages from passing for the server's. Servers and peers derive it once per
 * session (`serverToPeerKey`) and MAC or check each message under it: one HMAC a message, not two.
 */
export const serverToPeerKey = (sessionToken: string): string =>
  createHmac("sha256", sessionToken).update("picus: server to peer").digest("base64url")

export const macFromServer = (payload: string, sessionToken: string): string =>
  macPayload(payload, serverToPeerKey(sessionToken))

export const checkMacFromServer = (payload: string, sessionToken: string): MacCheck =>
  checkMac(payload, serverToPeerKey(sessionToken))

export const checkMac = (payload: string, sessionToken: string): MacCheck => {
  const parts = splitTrailer(payload, "mac")
  if (parts === undefined) return "missing"
  const given = Buffer.from(parts.value, "base64url")
  const expected = macOf(parts.covered, sessionToken)
  return given.length === expected.length && timingSafeEqual(given, expected) ? "valid" : "invalid"
}
