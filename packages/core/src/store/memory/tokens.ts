import { Effect, Option } from "effect"
import { TokenStore, type TokenStoreService } from "../TokenStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryTokens = (memory: MemoryState): TokenStoreService => {
  const { tokens } = memory
  const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
  return TokenStore.of({
    createToken: ({ name, prefix, hash, peerId }) =>
      Effect.sync(() => {
        const info = {
          tokenId: memory.nextTokenId++,
          name,
          prefix,
          createdAt: Date.now(),
          revokedAt: null,
          peerId: peerId ?? null,
        }
        tokens.push({ ...info, hash: hex(hash) })
        return info
      }),
    listTokens: Effect.sync(() => tokens.map(({ hash: _hash, ...info }) => info)),
    revokeToken: (idOrPrefix) =>
      Effect.sync(() => {
        const byId = /^\d+$/.test(idOrPrefix)
        const revoked: Array<number> = []
        tokens.forEach((t, i) => {
          const match = byId ? String(t.tokenId) === idOrPrefix : t.prefix === idOrPrefix
          if (match && t.revokedAt === null) {
            tokens[i] = { ...t, revokedAt: Date.now() }
            revoked.push(t.tokenId)
          }
        })
        return revoked
      }),
    findActiveToken: (hash) =>
      Effect.sync(() => {
        const wanted = hex(hash)
        const found = tokens.find((t) => t.hash === wanted && t.revokedAt === null)
        return found ? Option.some(found) : Option.none()
      }).pipe(Effect.map(Option.map(({ hash: _hash, ...info }) => info))),
  })
}
