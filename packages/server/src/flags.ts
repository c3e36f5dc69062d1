/**
 * The flags every command that reaches PostgreSQL or Redis takes. Apart from layers.ts so that a
 * command line can declare them without loading the stores.
 */
import type { Command } from "cac"

export const sharedOptions = (command: Command) =>
  command
    .option("--database-url <url>", "PostgreSQL URL (env DATABASE_URL)")
    .option("--redis-url <url>", "Redis URL, a /db index is honoured (env REDIS_URL)")
    .option("--redis-prefix <prefix>", "Prefix of every Redis key (env PICUS_REDIS_PREFIX, default picus)")
    .option(
      "--redis-users <on|off>",
      "A Redis user per peer, limited to what it needs (env PICUS_REDIS_USERS, default on; off: open mode)",
    )
