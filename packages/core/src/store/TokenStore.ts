import { Context, type Effect, type Option } from "effect"
import type { StoreError } from "./StoreError.ts"

export interface TokenInfo {
  readonly tokenId: number
  readonly name: string
  readonly prefix: string
  readonly createdAt: number
  readonly revokedAt: number | null
  /** The one peer id the token may register (a provisioned peer's own token); absent or null: any. */
  readonly peerId?: string | null
}

export interface NewToken {
  readonly name: string
  readonly prefix: string
  readonly hash: Uint8Array
}

/** Enrollment tokens (hashes only). */
export interface TokenStoreService {
  readonly createToken: (token: NewToken) => Effect.Effect<TokenInfo, StoreError>
  readonly listTokens: Effect.Effect<ReadonlyArray<TokenInfo>, StoreError>
  /** Revokes by id or by prefix; returns how many tokens it revoked. */
  readonly revokeToken: (idOrPrefix: string) => Effect.Effect<number, StoreError>
  readonly findActiveToken: (hash: Uint8Array) => Effect.Effect<Option.Option<TokenInfo>, StoreError>
}

export class TokenStore extends Context.Service<TokenStore, TokenStoreService>()("@picus/core/TokenStore") {}
