import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import {
  JobScheduler,
  StoreMemory,
  type Stores,
  type Transport,
  TransportMemory,
  TransportRedis,
} from "@picus/core"
import { deleteKeysWithPrefix, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { Effect, Layer } from "effect"
import { PeerAccess } from "../../src/access/PeerAccess.ts"
import { EMBEDDED_POOL_SIZE, serveEmbedded } from "../../src/db/embedded.ts"
import { PgStore } from "../../src/db/PgStore.ts"
import { freshDatabase } from "./database.ts"

export type ServerServices = Stores | Transport | JobScheduler | PeerAccess

/**
 * The three compositions the server runs on: all in memory; the real services (a fresh
 * PostgreSQL database and a Redis key prefix of the test's own); and make dev's embedded one
 * (PGlite behind its socket, in-memory transport).
 */
export const compositions: ReadonlyArray<readonly [string, () => Layer.Layer<ServerServices, unknown>]> = [
  ["memory", () => withScheduler(StoreMemory.layerMemory, TransportMemory.layerMemory)],
  [
    "postgres+redis",
    () => {
      const store = Layer.unwrap(
        Effect.acquireRelease(
          Effect.promise(() => freshDatabase()),
          (db) => Effect.promise(() => db.drop()),
        ).pipe(Effect.map((db) => PgStore.layer(db.url))),
      )
      const prefix = testKeyPrefix()
      const transport = Layer.effectDiscard(
        Effect.addFinalizer(() => Effect.promise(() => deleteKeysWithPrefix(testRedisUrl(), prefix))),
      ).pipe(Layer.provideMerge(TransportRedis.layerRedis({ url: testRedisUrl(), prefix })))
      return withScheduler(store, transport)
    },
  ],
  [
    "embedded",
    () => {
      const store = Layer.unwrap(
        serveEmbedded(mkdtempSync(join(tmpdir(), "picus-embedded-"))).pipe(
          Effect.map((url) => PgStore.layer(url, { maxPoolSize: EMBEDDED_POOL_SIZE })),
        ),
      )
      return withScheduler(store, TransportMemory.layerMemory)
    },
  ],
]

const withScheduler = (store: Layer.Layer<Stores, unknown>, transport: Layer.Layer<Transport, unknown>) =>
  JobScheduler.layer({ maxInFlight: 4 }).pipe(
    Layer.provideMerge(store),
    Layer.provideMerge(transport),
    Layer.merge(PeerAccess.layerOpen),
  )
