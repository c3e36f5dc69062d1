/** `picus cluster-key new|show`: the key servers sign with and derive session tokens from. */
import type { CAC } from "cac"
import { Console, Effect, Redacted } from "effect"
import {
  ConfigError,
  describeClusterKey,
  newClusterKey,
  requireClusterKey,
  resolveServerConfig,
  type ServerFlags,
  writeNewKeyFile,
} from "server"
import { run } from "../support.ts"

export const registerClusterKey = (cli: CAC): void => {
  cli
    .command(
      "cluster-key <action>",
      "The key servers sign with and derive session tokens from: new [--out file], show",
    )
    .option("--out <file>", "new: write the key to this file (mode 0600) instead of printing it")
    .option(
      "--cluster-key-file <file>",
      "show: the key file (env PICUS_CLUSTER_KEY_FILE or PICUS_CLUSTER_KEY)",
    )
    .example("picus cluster-key new --out /etc/picus/cluster.key")
    .action((action: string, flags: ServerFlags & { out?: string }) => {
      switch (action) {
        case "new":
          return run(
            Effect.gen(function* () {
              if (flags.out === undefined) {
                // Printed once, on stdout alone, so that `> file` captures nothing else.
                const key = newClusterKey()
                yield* Console.log(Redacted.value(key.seed))
                for (const line of describeClusterKey(key)) yield* Console.error(line)
                return
              }
              const key = yield* Effect.try({
                try: () => writeNewKeyFile(String(flags.out)),
                catch: (error) => error,
              })
              yield* Console.log(`cluster key written to ${flags.out} (mode 0600)`)
              for (const line of describeClusterKey(key)) yield* Console.log(line)
            }),
          )
        case "show":
          return run(
            Effect.gen(function* () {
              const key = requireClusterKey(resolveServerConfig(flags))
              for (const line of describeClusterKey(key)) yield* Console.log(line)
            }),
          )
        default:
          return run(Effect.fail(new ConfigError(`unknown cluster-key action "${action}" (new, show)`)))
      }
    })
}
