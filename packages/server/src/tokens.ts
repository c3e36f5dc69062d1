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

/** What a token check found: the token may enroll this peer (and which token it is), or why not. */
export type TokenVerdict =
  | {
      readonly accepted: true
      /** The database token's id; null for one of PICUS_TOKENS (not revocable from here). */
      readonly tokenId: number | null
    }
  | { readonly accepted: false; readonly reason: string }

/**
 * Whether `token` may enroll `peerId`: one of PICUS_TOKENS, or an active database token that is not
 * bound to another peer id (a provisioned seed peer's token enrolls that peer alone). The reason
 * never quotes the token. Asks for the whole Store: its caller, the gateway's registration, works
 * with the Store.
 */
export const checkEnrollmentToken = Effect.fnUntraced(function* (
  tokens: EnrollmentTokens,
  token: string,
  peerId: string,
): Effect.fn.Return<TokenVerdict, StoreError, Store> {
  const hash = hashSecret(token)
  // Compare against every environment token, so timing does not tell which one matched.
  let matched = false
  for (const known of tokens.fromEnvironment) matched = sameHash(hash, known) || matched
  if (matched) return { accepted: true, tokenId: null }
  const store = yield* Store
  const found = yield* store.findActiveToken(hash)
  if (Option.isNone(found)) return { accepted: false, reason: Protocol.RejectReason.unknownToken }
  if (found.value.peerId !== null && found.value.peerId !== peerId)
    return { accepted: false, reason: Protocol.RejectReason.wrongPeer }
  return { accepted: true, tokenId: found.value.tokenId }
})

/**
 * None when the token may enroll; Some(reason) when it may not (see checkEnrollmentToken). Without
 * the peer id, a token bound to a peer id is refused: its binding cannot be checked.
 */
export const verifyEnrollmentToken = (
  tokens: EnrollmentTokens,
  token: string,
  peerId?: string,
): Effect.Effect<Option.Option<string>, StoreError, Store> =>
  checkEnrollmentToken(tokens, token, peerId ?? "\u0000unknown peer").pipe(
    Effect.map((verdict) => (verdict.accepted ? Option.none() : Option.some(verdict.reason))),
  )

/**
 * Creates an enrollment token (bound to `peerId` when given); the secret is returned once and only
 * its hash is stored.
 */
export const createEnrollmentToken = Effect.fnUntraced(function* (
  name: string,
  options: { readonly peerId?: string } = {},
) {
  const store = yield* TokenStore
  const secret = newSecret("picus")
  const info = yield* store.createToken({
    name,
    prefix: secretPrefix(secret),
    hash: hashSecret(secret),
    peerId: options.peerId ?? null,
  })
  return { secret, info }
})
