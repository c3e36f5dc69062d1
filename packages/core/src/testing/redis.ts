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

/** Deletes every Redis user whose name starts with a test's prefix (never `default`). */
export const deleteAclUsersWithPrefix = async (url: string, prefix: string): Promise<void> => {
  const client = new Redis(url)
  try {
    const names = ((await client.call("ACL", "USERS")) as Array<string>).filter((name) =>
      name.startsWith(`${prefix}:`),
    )
    if (names.length > 0) await client.call("ACL", "DELUSER", ...names)
  } finally {
    client.disconnect()
  }
}

/**
 * A connection logged in as `user`, sending only what a peer's login may (no ready check, no
 * client info), never reconnecting. `send` answers "ok" or the error's first word (NOPERM, ...).
 */
export const connectAs = (url: string, user: string, password: string) => {
  const client = new Redis(url, {
    username: user,
    password,
    enableReadyCheck: false,
    disableClientInfo: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  })
  client.on("error", () => {})
  return {
    send: async (...args: ReadonlyArray<string>): Promise<string> => {
      try {
        await client.call(args[0]!, ...args.slice(1))
        return "ok"
      } catch (error) {
        return (error instanceof Error ? error.message : String(error)).split(" ")[0]!
      }
    },
    close: () => client.disconnect(),
  }
}

/** One command as `user` on a connection of its own: "ok" or the error's first word. */
export const commandAs = async (
  url: string,
  user: string,
  password: string,
  ...args: ReadonlyArray<string>
): Promise<string> => {
  const connection = connectAs(url, user, password)
  try {
    return await connection.send(...args)
  } finally {
    connection.close()
  }
}
