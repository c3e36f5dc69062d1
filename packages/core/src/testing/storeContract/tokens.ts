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
        assert.isNull(listed?.peerId)
        assert.deepStrictEqual(yield* store.revokeToken(prefix), [created.tokenId])
        assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
        assert.deepStrictEqual(yield* store.revokeToken(unique("nothing")), [])
        assert.deepStrictEqual(yield* store.revokeToken(prefix), [], "already revoked")
      }),
    )

    it.effect("revokes by numeric id too", () =>
      Effect.gen(function* () {
        const store = yield* TokenStore
        const secret = unique("secret")
        const created = yield* store.createToken({ name: "x", prefix: unique("p"), hash: hashOf(secret) })
        assert.deepStrictEqual(yield* store.revokeToken(String(created.tokenId)), [created.tokenId])
        assert.isTrue(Option.isNone(yield* store.findActiveToken(hashOf(secret))))
      }),
    )

    it.effect("keeps the peer id a token is bound to", () =>
      Effect.gen(function* () {
        const store = yield* TokenStore
        const secret = unique("secret")
        const peerId = unique("seed")
        const created = yield* store.createToken({
          name: "seed",
          prefix: unique("p"),
          hash: hashOf(secret),
          peerId,
        })
        assert.strictEqual(created.peerId, peerId)
        const found = yield* store.findActiveToken(hashOf(secret))
        assert.strictEqual(Option.getOrUndefined(found)?.peerId, peerId)
      }),
    )
  })
}
