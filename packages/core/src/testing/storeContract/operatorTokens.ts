import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { OperatorTokenStore } from "../../store/Store.ts"
import { hashOf, type StoreIt, unique } from "./support.ts"

/** Operator tokens (the HTTP API's), apart from enrollment tokens. */
export const operatorTokenContract = (it: StoreIt) => {
  describe("operator tokens", () => {
    it.effect("stores a token by hash with its scope, finds it while active, and not after revocation", () =>
      Effect.gen(function* () {
        const store = yield* OperatorTokenStore
        const secret = unique("op")
        const prefix = unique("opx")
        const created = yield* store.createOperatorToken({
          name: "grafana",
          scope: "read",
          prefix,
          hash: hashOf(secret),
        })
        assert.strictEqual(created.scope, "read")
        assert.isNull(created.lastUsedAt)
        const used = yield* store.useOperatorToken(hashOf(secret))
        assert.isTrue(Option.isSome(used))
        assert.strictEqual(Option.getOrThrow(used).tokenId, created.tokenId)
        assert.isNotNull(Option.getOrThrow(used).lastUsedAt, "its use is noted")
        assert.isTrue(Option.isNone(yield* store.useOperatorToken(hashOf(`${secret}x`))))
        const listed = (yield* store.listOperatorTokens).find((t) => t.tokenId === created.tokenId)
        assert.strictEqual(listed?.name, "grafana")
        assert.notProperty(listed, "hash")
        assert.deepStrictEqual(yield* store.revokeOperatorToken(prefix), [created.tokenId])
        assert.isTrue(Option.isNone(yield* store.useOperatorToken(hashOf(secret))))
        assert.deepStrictEqual(yield* store.revokeOperatorToken(prefix), [], "already revoked")
      }),
    )

    it.effect("revokes by numeric id; an enrollment token's hash opens nothing here", () =>
      Effect.gen(function* () {
        const store = yield* OperatorTokenStore
        const secret = unique("op")
        const created = yield* store.createOperatorToken({
          name: "ops",
          scope: "admin",
          prefix: unique("p"),
          hash: hashOf(secret),
        })
        assert.strictEqual(Option.getOrThrow(yield* store.useOperatorToken(hashOf(secret))).scope, "admin")
        assert.deepStrictEqual(yield* store.revokeOperatorToken(String(created.tokenId)), [created.tokenId])
        assert.isTrue(Option.isNone(yield* store.useOperatorToken(hashOf(secret))))
      }),
    )
  })
}
