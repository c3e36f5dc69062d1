/** `picus peers add <id>`: provision a seed peer (a token for that id alone, and its Redis user). */
import { Protocol } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import {
  addSeedPeer,
  ConfigError,
  OPEN_MODE_WARNING,
  redisUrlFor,
  resolveServerConfig,
  type ServerFlags,
  sharedOptions,
  withRedisUsers,
  withStore,
} from "server"
import { run } from "../support.ts"

export const registerSeedPeers = (cli: CAC): void => {
  sharedOptions(
    cli.command(
      "peers <action> <id>",
      "Seed peers: add <id> provisions one (a token for that id alone, and its Redis user)",
    ),
  )
    .option("--json", "Machine-readable output")
    .example("picus peers add web-7   # prints the token and Redis login once")
    .action((action: string, id: string, flags: ServerFlags & { json?: boolean }) => {
      if (action !== "add") return run(Effect.fail(new ConfigError(`unknown peers action "${action}" (add)`)))
      const peerId = String(id)
      if (peerId === "" || [...peerId].length > Protocol.MAX_ID_LENGTH)
        return run(
          Effect.fail(
            new ConfigError(`a peer id is 1 to ${Protocol.MAX_ID_LENGTH} characters, got "${peerId}"`),
          ),
        )
      const config = resolveServerConfig(flags)
      return run(
        withStore(
          config,
          withRedisUsers(config, (users) =>
            Effect.gen(function* () {
              const { secret, tokenId, redis } = yield* addSeedPeer(peerId, { users })
              const url = redis ? redisUrlFor(config.redisUrl, redis.user, redis.password) : undefined
              if (flags.json)
                return yield* Console.log(
                  JSON.stringify({
                    peer_id: peerId,
                    token: secret,
                    id: tokenId,
                    redis_user: redis?.user ?? null,
                    redis_password: redis?.password ?? null,
                    redis_url: url ?? null,
                  }),
                )
              yield* Console.log(`token:          ${secret}`)
              if (redis) {
                yield* Console.log(`redis user:     ${redis.user}`)
                yield* Console.log(`redis password: ${redis.password}`)
                yield* Console.log(`redis url:      ${url}`)
              }
              yield* Console.error(
                `seed peer ${peerId} provisioned (token ${tokenId}, for this peer id only); shown only this once${redis ? "" : `. ${OPEN_MODE_WARNING}`}`,
              )
            }),
          ),
        ),
      )
    })
}
