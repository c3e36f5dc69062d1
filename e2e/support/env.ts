import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Trust } from "@picus/core"
import {
  deleteAclUsersWithPrefix,
  deleteKeysWithPrefix,
  testKeyPrefix,
  testRedisUrl,
} from "@picus/core/testing"
import { createPool, type DatabasePool, type QuerySqlToken } from "slonik"
import { type FreshDatabase, freshDatabase } from "../../packages/server/test/support/database.ts"

/** One test's world: its own database, Redis key prefix and temporary folder. */
export interface World {
  readonly db: FreshDatabase
  readonly pool: DatabasePool
  readonly prefix: string
  readonly dir: string
  /**
   * Environment shared by the server and peers of this test. It holds the cluster key every server
   * instance of the test shares (PICUS_CLUSTER_KEY), and its public key (PICUS_CLUSTER_PUBLIC_KEY)
   * for the peers to pin.
   */
  readonly env: Record<string, string>
  /** The cluster's public key, for peers to pin. */
  readonly clusterPublicKey: string
  readonly query: <T>(query: QuerySqlToken) => Promise<ReadonlyArray<T>>
  readonly close: () => Promise<void>
}

export const makeWorld = async (extraEnv: Record<string, string> = {}): Promise<World> => {
  const db = await freshDatabase()
  const pool = await createPool(db.url, { maxPoolSize: 2 })
  const prefix = testKeyPrefix()
  const dir = mkdtempSync(join(tmpdir(), "picus-e2e-"))
  const clusterKey = Trust.newPrivateKey()
  const clusterPublicKey = Trust.signingKeyOf(clusterKey)!.publicKey
  const env = {
    DATABASE_URL: db.url,
    REDIS_URL: testRedisUrl(),
    PICUS_REDIS_PREFIX: prefix,
    PICUS_CLUSTER_KEY: clusterKey,
    PICUS_CLUSTER_PUBLIC_KEY: clusterPublicKey,
    ...extraEnv,
  }
  return {
    db,
    pool,
    prefix,
    dir,
    env,
    clusterPublicKey,
    query: async <T>(query: QuerySqlToken) => (await pool.any(query)) as ReadonlyArray<T>,
    close: async () => {
      await pool.end()
      await db.drop()
      await deleteKeysWithPrefix(testRedisUrl(), prefix)
      // The servers make Redis users under the prefix (enroll users, sessions' users).
      await deleteAclUsersWithPrefix(testRedisUrl(), prefix)
    },
  }
}

/** Writes a catalog file for the test and returns its path. */
export const writeCatalog = (
  dir: string,
  jobs: ReadonlyArray<Record<string, unknown>>,
  name = "catalog",
): string => {
  const path = join(dir, `${name}.json`)
  writeFileSync(path, JSON.stringify({ jobs }))
  return path
}
