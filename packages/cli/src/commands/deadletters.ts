/** `picus deadletters list|retry|drop`: uplink entries set aside as unhandleable. */
import { MAX_DEAD_LETTERS, Transport, TransportRedis } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import { ConfigError, printRows, resolveServerConfig, type ServerFlags, sharedOptions } from "server"
import { run } from "../support.ts"

export const registerDeadLetters = (cli: CAC): void => {
  sharedOptions(
    cli.command(
      "deadletters [action] [...ids]",
      "Uplink entries set aside as unhandleable: list, retry <id...|--all>, drop <id...|--all>",
    ),
  )
    .option("--all", "retry or drop every dead letter")
    .option("--limit <n>", "Most rows listed", { default: 100 })
    .option("--json", "Machine-readable output")
    .example("picus deadletters retry --all   # after fixing what refused them")
    .action(
      (
        action: string | undefined,
        ids: ReadonlyArray<string>,
        flags: ServerFlags & { all?: boolean; limit: number; json?: boolean },
      ) => {
        const config = resolveServerConfig(flags)
        const verb = action ?? "list"
        if (!["list", "retry", "drop"].includes(verb))
          return run(Effect.fail(new ConfigError(`unknown deadletters action "${verb}" (list, retry, drop)`)))
        if (verb !== "list" && ids.length === 0 && flags.all !== true)
          return run(Effect.fail(new ConfigError(`deadletters ${verb} needs dead-letter ids or --all`)))
        return run(
          Effect.gen(function* () {
            const transport = yield* Transport
            if (verb === "list") {
              const letters = yield* transport.deadLetters(Number(flags.limit))
              return printRows(
                letters.map((d) => ({
                  id: d.id,
                  at: new Date(d.at).toISOString(),
                  attempts: d.attempts,
                  server_id: d.serverId,
                  reason: d.reason,
                  ...(flags.json ? { payload: d.payload } : {}),
                })),
                flags.json === true,
              )
            }
            const chosen =
              flags.all === true ? (yield* transport.deadLetters(MAX_DEAD_LETTERS)).map((d) => d.id) : ids
            const count =
              verb === "retry"
                ? yield* transport.retryDeadLetters(chosen)
                : yield* transport.dropDeadLetters(chosen)
            yield* Console.log(
              `${verb === "retry" ? "put back on the uplink" : "dropped"}: ${count} dead letter(s)`,
            )
          }).pipe(
            Effect.provide(TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix })),
          ),
        )
      },
    )
}
