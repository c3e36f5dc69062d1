import {
  hashSecret,
  newSecret,
  Protocol,
  Store,
  type StoreError,
  sameHash,
  secretPrefix,
  TokenStore,
} from "@picus/core"
import { Effect, Option } from "effect"

/** Enrollment tokens accepted besides those in the database (PICUS_TOKENS), kept as hashes only. */
export interface EnrollmentTokens {
  readonly fromEnvironment: ReadonlyArray<Uint8Array>
}

export const enrollmentTokensFrom = (commaSeparated: string | undefined): EnrollmentTokens => ({
  fromEnvironment: (commaSeparated ?? "")
    .split(",")
    .map((t) => t.trim())
    .filter((t) => t.length > 0)
    .map(hashSecret),
})

/**
 * None when the token may enroll `peerId`; Some(reason) when it may not. A token bound to a peer id
 * (a provisioned peer's own) is valid for that id alone; without `peerId`, that is not checked. The
 * reason never quotes the token. Asks for the whole Store: its caller, the gateway's registration,
 * works with the Store.
 */
export const verifyEnrollmentToken = Effect.fnUntraced(function* (
  tokens: EnrollmentTokens,
  token: string,
  peerId?: string,
): Effect.fn.Return<Option.Option<string>, StoreError, Store> {
  const hash = hashSecret(token)
  // Compare against every environment token, so timing does not tell which one matched.
  let matched = false
  for (const known of tokens.fromEnvironment) matched = sameHash(hash, known) || matched
  if (matched) return Option.none()
  const store = yield* Store
  const found = yield* store.findActiveToken(hash)
  if (Option.isNone(found)) return Option.some(Protocol.RejectReason.unknownToken)
  const boundTo = found.value.peerId ?? null
  if (peerId !== undefined && boundTo !== null && boundTo !== peerId)
    return Option.some(Protocol.RejectReason.wrongPeer)
  return Option.none()
})

/** Creates an enrollment token; the secret is returned once and only its hash is stored. */
export const createEnrollmentToken = Effect.fnUntraced(function* (name: string) {
  const store = yield* TokenStore
  const secret = newSecret("picus")
  const info = yield* store.createToken({ name, prefix: secretPrefix(secret), hash: hashSecret(secret) })
  return { secret, info }
})
