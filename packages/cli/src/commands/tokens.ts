/** `picus token create|list|revoke`: enrollment tokens. */
import { TokenStore } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import {
  ConfigError,
  createToken,
  printRows,
  resolveServerConfig,
  revokeTokens,
  type ServerFlags,
  sharedOptions,
  transportLayer,
  withRedisUsers,
  withStore,
} from "server"
import { run } from "../support.ts"

export const registerTokens = (cli: CAC): void => {
  sharedOptions(
    cli.command("token <action> [target]", "Enrollment tokens: create [--name], list, revoke <id|prefix>"),
  )
    .option("--name <name>", "A label for a new token", { default: "peer" })
    .option("--json", "Machine-readable output")
    .action(
      (action: string, target: string | undefined, flags: ServerFlags & { name: string; json?: boolean }) => {
        const config = resolveServerConfig(flags)
        switch (action) {
          case "create":
            return run(
              Effect.suspend(() => {
                // Read before anything is written: a bad key refuses the command.
                const clusterKey = config.clusterKey?.publicKey
                return withStore(
                  config,
                  withRedisUsers(config, (users) =>
                    Effect.gen(function* () {
                      const created = yield* createToken(String(flags.name), { users, clusterKey })
                      if (flags.json)
                        return yield* Console.log(
                          JSON.stringify({
                            token: created.secret,
                            id: created.tokenId,
                            name: created.name,
                            enrollment: created.enrollment ?? null,
                            redis_user: created.redisUser ?? null,
                          }),
                        )
                      yield* Console.log(created.enrollment ?? created.secret)
                      yield* Console.error(
                        created.enrollment === undefined
                          ? `token ${created.tokenId} (${created.name}) created; it is shown only this once. No enrollment string: PICUS_CLUSTER_KEY is not set`
                          : `token ${created.tokenId} (${created.name}) created: above is its enrollment string for a new peer (--enroll), shown only this once`,
                      )
                    }),
                  ),
                )
              }),
            )
          case "list":
            return run(
              withStore(
                config,
                Effect.gen(function* () {
                  const store = yield* TokenStore
                  const tokens = yield* store.listTokens
                  printRows(
                    tokens.map((t) => ({
                      id: t.tokenId,
                      name: t.name,
                      prefix: t.prefix,
                      peer: t.peerId ?? "",
                      created: new Date(t.createdAt).toISOString(),
                      revoked: t.revokedAt === null ? "" : new Date(t.revokedAt).toISOString(),
                    })),
                    flags.json === true,
                  )
                }),
                false,
                true,
              ),
            )
          case "revoke":
            if (!target) return run(Effect.fail(new ConfigError("token revoke needs a token id or prefix")))
            return run(
              withStore(
                config,
                withRedisUsers(config, (users) =>
                  Effect.gen(function* () {
                    const { tokenIds, ended, droppedUsers } = yield* revokeTokens(target, { users })
                    if (tokenIds.length === 0)
                      return yield* Effect.fail(new ConfigError(`no active token matches "${target}"`))
                    yield* Console.log(
                      `revoked ${tokenIds.length} token(s); ended ${ended.length} session(s); dropped ${droppedUsers.length} Redis user(s)`,
                    )
                  }),
                ).pipe(Effect.provide(transportLayer(config))),
              ),
            )
          default:
            return run(
              Effect.fail(new ConfigError(`unknown token action "${action}" (create, list, revoke)`)),
            )
        }
      },
    )
}
