import { randomUUID } from "node:crypto"
import { Redis } from "ioredis"

/** The Redis the tests use: REDIS_URL, or the local default. */
export const testRedisUrl = (): string => process.env.REDIS_URL ?? "redis://127.0.0.1:6379"

/** A key prefix of a test's own, so tests never see each other's keys. */
export const testKeyPrefix = (): string => `picus-test:${randomUUID()}`

/** Deletes every key under a test's prefix. */
export const deleteKeysWithPrefix = async (url: string, prefix: string): Promise<void> => {
  const client = new Redis(url)
  try {
    let cursor = "0"
    do {
      const [next, keys] = await client.scan(cursor, "MATCH", `${prefix}:*`, "COUNT", 1000)
      cursor = next
      if (keys.length > 0) await client.del(...keys)
    } while (cursor !== "0")
  } finally {
    client.disconnect()
  }
}

/** The payloads of a stream's entries, oldest first. */
export const streamPayloads = async (url: string, key: string): Promise<Array<string>> => {
  const client = new Redis(url, { maxRetriesPerRequest: 1 })
  client.on("error", () => {})
  try {
    const entries = await client.xrange(key, "-", "+")
    return entries.map(([, fields]) => fields.join(" "))
  } finally {
    client.disconnect()
  }
}
