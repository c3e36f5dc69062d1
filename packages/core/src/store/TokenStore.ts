import { Context, type Effect, type Option } from "effect"
import type { StoreError } from "./StoreError.ts"

export interface TokenInfo {
  readonly tokenId: number
  readonly name: string
  readonly prefix: string
  readonly createdAt: number
  readonly revokedAt: number | null
  /** The one peer id the token may enroll (a provisioned seed peer's); null: any. */
  readonly peerId: string | null
}

export interface NewToken {
  readonly name: string
  readonly prefix: string
  readonly hash: Uint8Array
  /** Binds the token to this peer id (`./picus peers add`). */
  readonly peerId?: string | null
}

/** Enrollment tokens (hashes only). */
export interface TokenStoreService {
  readonly createToken: (token: NewToken) => Effect.Effect<TokenInfo, StoreError>
  readonly listTokens: Effect.Effect<ReadonlyArray<TokenInfo>, StoreError>
  /** Revokes by id or by prefix; returns the ids of the tokens it revoked (none: nothing active matched). */
  readonly revokeToken: (idOrPrefix: string) => Effect.Effect<ReadonlyArray<number>, StoreError>
  readonly findActiveToken: (hash: Uint8Array) => Effect.Effect<Option.Option<TokenInfo>, StoreError>
}

export class TokenStore extends Context.Service<TokenStore, TokenStoreService>()("@picus/core/TokenStore") {}
