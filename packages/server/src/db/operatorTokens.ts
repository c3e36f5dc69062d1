import {
  OPERATOR_TOUCH_MS,
  OperatorScope,
  OperatorTokenStore,
  type OperatorTokenStoreService,
} from "@picus/core"
import { Option, Schema } from "effect"
import { type DatabasePool, sql } from "slonik"
import { attempt, NullableInt, std, tokenMatch } from "./shared.ts"

const OperatorTokenRow = std(
  Schema.Struct({
    tokenId: Schema.Int,
    name: Schema.String,
    scope: OperatorScope,
    prefix: Schema.String,
    createdAt: Schema.Int,
    revokedAt: NullableInt,
    lastUsedAt: NullableInt,
  }),
)
const TokenIdRow = std(Schema.Struct({ tokenId: Schema.Int }))

const columns = sql.fragment`
  token_id as "tokenId", name, scope, prefix, created_at as "createdAt", revoked_at as "revokedAt",
  last_used_at as "lastUsedAt"
`

/** The OperatorTokenStore over a slonik pool. */
export const makePgOperatorTokens = (pool: DatabasePool): OperatorTokenStoreService =>
  OperatorTokenStore.of({
    createOperatorToken: (token) =>
      attempt("createOperatorToken", () =>
        pool.one(sql.type(OperatorTokenRow)`
          insert into operator_tokens (name, scope, prefix, token_hash)
          values (${token.name}, ${token.scope}, ${token.prefix}, ${sql.binary(Buffer.from(token.hash))})
          returning ${columns}
        `),
      ),

    listOperatorTokens: attempt("listOperatorTokens", () =>
      pool.any(sql.type(OperatorTokenRow)`select ${columns} from operator_tokens order by token_id`),
    ),

    revokeOperatorToken: (idOrPrefix) =>
      attempt("revokeOperatorToken", async () => {
        const match = tokenMatch(idOrPrefix)
        if (match === undefined) return []
        return pool.anyFirst(sql.type(TokenIdRow)`
          update operator_tokens set revoked_at = now()
          where ${match} and revoked_at is null
          returning token_id as "tokenId"
        `)
      }),

    useOperatorToken: (hash) =>
      attempt("useOperatorToken", async () => {
        const found = await pool.maybeOne(sql.type(OperatorTokenRow)`
          select ${columns} from operator_tokens
          where token_hash = ${sql.binary(Buffer.from(hash))} and revoked_at is null
        `)
        if (found === null) return Option.none()
        if (found.lastUsedAt !== null && Date.now() - found.lastUsedAt < OPERATOR_TOUCH_MS)
          return Option.some(found)
        // A write only once a minute per token; the row's own value tells whether it is due.
        const touched = await pool.maybeOne(sql.type(OperatorTokenRow)`
          update operator_tokens set last_used_at = now()
          where token_id = ${found.tokenId} and revoked_at is null
          returning ${columns}
        `)
        return Option.fromNullOr(touched)
      }),
  })
