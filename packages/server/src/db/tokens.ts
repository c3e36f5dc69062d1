import { TokenStore, type TokenStoreService } from "@picus/core"
import { Option, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, NullableInt, NullableString, std, tokenMatch } from "./shared.ts"

const TokenRow = std(
  Schema.Struct({
    tokenId: Schema.Int,
    name: Schema.String,
    prefix: Schema.String,
    createdAt: Schema.Int,
    revokedAt: NullableInt,
    peerId: NullableString,
  }),
)
const TokenIdRow = std(Schema.Struct({ tokenId: Schema.Int }))

const tokenColumns = sql.fragment`
  token_id as "tokenId", name, prefix, created_at as "createdAt", revoked_at as "revokedAt",
  peer_id as "peerId"
`

/** The TokenStore over a slonik pool. */
export const makePgTokens = (pool: DatabasePool): TokenStoreService => {
  return TokenStore.of({
    createToken: (token) =>
      attempt("createToken", () =>
        pool.one(sql.type(TokenRow)`
          insert into tokens (name, prefix, token_hash, peer_id)
          values (${token.name}, ${token.prefix}, ${sql.binary(Buffer.from(token.hash))}, ${token.peerId ?? null})
          returning ${tokenColumns}
        `),
      ),

    listTokens: attempt("listTokens", () =>
      pool.any(sql.type(TokenRow)`select ${tokenColumns} from tokens order by token_id`),
    ),

    revokeToken: (idOrPrefix) =>
      attempt("revokeToken", async () => {
        const match = tokenMatch(idOrPrefix)
        if (match === undefined) return []
        return pool.anyFirst(sql.type(TokenIdRow)`
          update tokens set revoked_at = now()
          where ${match} and revoked_at is null
          returning token_id as "tokenId"
        `)
      }),

    findActiveToken: (hash) =>
      attempt("findActiveToken", async () =>
        Option.fromNullOr(
          await pool.maybeOne(sql.type(TokenRow)`
            select ${tokenColumns} from tokens
            where token_hash = ${sql.binary(Buffer.from(hash))} and revoked_at is null
          `),
        ),
      ),
  })
}
