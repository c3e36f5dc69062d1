import { Effect, Option } from "effect"
import {
  OPERATOR_TOUCH_MS,
  OperatorTokenStore,
  type OperatorTokenStoreService,
} from "../OperatorTokenStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryOperatorTokens = (memory: MemoryState): OperatorTokenStoreService => {
  const { operatorTokens: tokens } = memory
  const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
  const info = ({ hash: _hash, ...rest }: (typeof tokens)[number]) => rest
  return OperatorTokenStore.of({
    createOperatorToken: ({ name, scope, prefix, hash }) =>
      Effect.sync(() => {
        const row = {
          tokenId: memory.nextOperatorTokenId++,
          name,
          scope,
          prefix,
          createdAt: Date.now(),
          revokedAt: null,
          lastUsedAt: null,
          hash: hex(hash),
        }
        tokens.push(row)
        return info(row)
      }),
    listOperatorTokens: Effect.sync(() => tokens.map(info)),
    revokeOperatorToken: (idOrPrefix) =>
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
    useOperatorToken: (hash) =>
      Effect.sync(() => {
        const wanted = hex(hash)
        const at = tokens.findIndex((t) => t.hash === wanted && t.revokedAt === null)
        if (at < 0) return Option.none()
        const found = tokens[at]!
        const now = Date.now()
        if (found.lastUsedAt === null || now - found.lastUsedAt >= OPERATOR_TOUCH_MS)
          tokens[at] = { ...found, lastUsedAt: now }
        return Option.some(info(tokens[at]!))
      }),
  })
}
