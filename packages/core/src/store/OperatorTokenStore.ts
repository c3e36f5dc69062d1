import { Context, type Effect, type Option, Schema } from "effect"
import type { StoreError } from "./StoreError.ts"

/** What an operator token lets its holder do over the HTTP API: read, or read and act. */
export const OperatorScope = Schema.Literals(["read", "admin"])
export type OperatorScope = typeof OperatorScope.Type

export interface OperatorTokenInfo {
  readonly tokenId: number
  readonly name: string
  readonly scope: OperatorScope
  readonly prefix: string
  readonly createdAt: number
  readonly revokedAt: number | null
  readonly lastUsedAt: number | null
}

export interface NewOperatorToken {
  readonly name: string
  readonly scope: OperatorScope
  readonly prefix: string
  readonly hash: Uint8Array
}

/** How often a token's last use is written at most: reading the API is not a write per request. */
export const OPERATOR_TOUCH_MS = 60_000

/** Operator tokens for the HTTP API (hashes only), apart from enrollment tokens. */
export interface OperatorTokenStoreService {
  readonly createOperatorToken: (token: NewOperatorToken) => Effect.Effect<OperatorTokenInfo, StoreError>
  readonly listOperatorTokens: Effect.Effect<ReadonlyArray<OperatorTokenInfo>, StoreError>
  /** Revokes by id or by prefix; returns the ids it revoked (none: nothing active matched). */
  readonly revokeOperatorToken: (idOrPrefix: string) => Effect.Effect<ReadonlyArray<number>, StoreError>
  /** The active token with this hash, its last use noted (at most once a minute). */
  readonly useOperatorToken: (hash: Uint8Array) => Effect.Effect<Option.Option<OperatorTokenInfo>, StoreError>
}

export class OperatorTokenStore extends Context.Service<OperatorTokenStore, OperatorTokenStoreService>()(
  "@picus/core/OperatorTokenStore",
) {}
