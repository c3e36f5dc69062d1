import { assert, describe } from "@effect/vitest"
import { Effect, Option } from "effect"
import { TokenStore } from "../../store/Store.ts"
import { hashOf, type StoreIt, unique } from "./support.ts"

/** Enrollment tokens. */
export const tokenContract = (it: StoreIt) => {
  describe("tokens", () => {
    it.effect("stores a token by hash, finds it while active, and not after revocation", () =>
      Effect.gen(function* () {
        const store = yield* TokenStore
        const secret = unique("secret")
        const prefix = unique("pfx")
        const created = yield* store.createToken({ name: "ci", prefix, hash: hashOf(secret) })
        assert.strictEqual(created.name, "ci")
        assert.isNull(created.revokedAt)
        const found = yield* store.findActiveToken(hashOf(secret))
        assert.isTrue(Option.isSome(found))
        assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(`${secret}x`))))
        const listed = (yield* store.listTokens).find((t) => t.tokenId === created.tokenId)
        assert.strictEqual(listed?.prefix, prefix)
        assert.notProperty(listed, "hash")
        assert.strictEqual(yield* store.revokeToken(prefix), 1)
        assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
        assert.strictEqual(yield* store.revokeToken(unique("nothing")), 0)
      }),
    )

    it.effect("revokes by numeric id too", () =>
      Effect.gen(function* () {
        const store = yield* TokenStore
        const secret = unique("secret")
        const created = yield* store.createToken({ name: "x", prefix: unique("p"), hash: hashOf(secret) })
        assert.strictEqual(yield* store.revokeToken(String(created.tokenId)), 1)
        assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
      }),
    )
  })
}
