import {
  hashSecret,
  newSecret,
  type OperatorScope,
  type OperatorTokenInfo,
  OperatorTokenStore,
  type StoreError,
  secretPrefix,
} from "@picus/core"
import { Effect, Option } from "effect"

/** The kind a secret's text starts with: an operator token is told apart from a peer's at a glance. */
export const OPERATOR_TOKEN_KIND = "picusop"

/** Creates an operator token; the secret is returned once and only its hash is stored. */
export const createOperatorToken = Effect.fnUntraced(function* (name: string, scope: OperatorScope) {
  const store = yield* OperatorTokenStore
  const secret = newSecret(OPERATOR_TOKEN_KIND)
  const info = yield* store.createOperatorToken({
    name,
    scope,
    prefix: secretPrefix(secret),
    hash: hashSecret(secret),
  })
  return { secret, info }
})

/**
 * The active operator token a request's bearer secret is, if any. Looked up by its SHA-256 (a
 * unique index: the database compares hashes, never the secret, so timing tells nothing of it).
 */
export const authenticateOperator = (
  secret: string,
): Effect.Effect<Option.Option<OperatorTokenInfo>, StoreError, OperatorTokenStore> =>
  secret.length === 0 || secret.length > 256
    ? Effect.succeed(Option.none())
    : Effect.flatMap(OperatorTokenStore, (store) => store.useOperatorToken(hashSecret(secret)))
