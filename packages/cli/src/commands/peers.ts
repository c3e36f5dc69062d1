/**
 * `picus peers`: every peer (os, distro, labels, online, last seen, the instance holding it); `picus
 * peers add <id>` provisions a seed peer (a token for that id alone, and its Redis user).
 */
import { Protocol, RunStore } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import {
  addSeedPeer,
  ConfigError,
  OPEN_MODE_WARNING,
  redisUrlFor,
  resolveServerConfig,
  type ServerFlags,
  withRedisUsers,
  withStore,
} from "server"
import { run } from "../support.ts"
import { definePeers, type PeersFlags, printPeers } from "./peersView.ts"
import { apiUrlOf } from "./runView.ts"

const list = (flags: ServerFlags & PeersFlags) =>
  withStore(
    resolveServerConfig(flags),
    Effect.gen(function* () {
      printPeers(yield* (yield* RunStore).peerViews(), flags.json === true)
    }),
    false,
    true,
  )

export const registerPeers = (cli: CAC): void => {
  definePeers(cli).action(
    (action: string | undefined, id: string | undefined, flags: ServerFlags & PeersFlags) => {
      if (action === undefined || action === "list") {
        const apiUrl = apiUrlOf(flags)
        if (apiUrl !== undefined)
          return import("../api/peers.ts").then((api) => api.peersViaApi(action, flags.json === true, apiUrl))
        return run(list(flags))
      }
      if (action !== "add")
        return run(Effect.fail(new ConfigError(`unknown peers action "${action}" (list, add)`)))
      if (id === undefined) return run(Effect.fail(new ConfigError("peers add needs the new peer's id")))
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
    },
  )
}
