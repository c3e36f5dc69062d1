/**
 * Authenticity on the wire. A signed or MACed message is its JSON with one more field at the very
 * end: `{...,"sig":"<base64url>"}` (the cluster's Ed25519 signature, server -> peer; a peer's own
 * signature on its registration) or `{...,"mac":"<base64url>"}` (HMAC-SHA256 under the session
 * token, peer -> server, for sessions opened with a sealed acceptance). What is signed is the exact
 * text before that field, closed with `}`: no canonical form to agree on, and a field added by a newer
 * sender is covered too. A reader that knows nothing of it (a seed peer) sees one more field it ignores.
 */

export type TrailerField = "sig" | "mac"

const TRAILER = /,"(sig|mac)":"([A-Za-z0-9_-]{16,128})"\}$/

/** The payload with `field` appended as its last member. */
export const appendTrailer = (payload: string, field: TrailerField, value: string): string =>
  `${payload.slice(0, -1)},"${field}":"${value}"}`

/** The text a trailer covers and the trailer's value, if the payload ends with one of `field`. */
export const splitTrailer = (
  payload: string,
  field: TrailerField,
): { readonly covered: string; readonly value: string } | undefined => {
  const match = TRAILER.exec(payload)
  if (match === null || match[1] !== field) return undefined
  return { covered: `${payload.slice(0, match.index)}}`, value: match[2]! }
}
