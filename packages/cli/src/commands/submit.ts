/** `picus submit <peer> <command>`: one shell command to one peer. */
import { TransportRedis } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import {
  resolveServerConfig,
  type ServerFlags,
  sharedOptions,
  submitJobs,
  validateSubmission,
  withExistingStore,
} from "server"
import { run } from "../support.ts"

export const registerSubmit = (cli: CAC): void => {
  sharedOptions(
    cli.command(
      "submit <peer> <command>",
      "Submit a shell command to one peer; it runs as soon as the peer is online",
    ),
  )
    .option("--name <name>", "A name for the job", { default: "adhoc" })
    .option("--timeout-ms <ms>", "The job's timeout on the peer", { default: 30_000 })
    .option("--json", "Machine-readable output")
    .example('picus submit web-7 "df -h /"')
    .action(
      (
        peer: string,
        command: string,
        flags: ServerFlags & { name: string; timeoutMs: number; json?: boolean },
      ) => {
        const config = resolveServerConfig(flags)
        const request = {
          peerId: String(peer),
          submittedBy: "cli",
          jobs: [{ name: String(flags.name), command: String(command), timeoutMs: Number(flags.timeoutMs) }],
        }
        return run(
          // Checked before the database is even opened: what the wire cannot carry is never written.
          validateSubmission(request).pipe(
            Effect.andThen(
              withExistingStore(
                config,
                Effect.gen(function* () {
                  const { tickets, ownerId } = yield* submitJobs(request)
                  const [ticket] = tickets
                  if (flags.json)
                    return yield* Console.log(
                      JSON.stringify({ ticket: ticket?.ticket, server_id: ownerId ?? null }),
                    )
                  yield* Console.log(
                    `ticket ${ticket?.ticket}: ${ownerId ? `sent to ${peer} through ${ownerId}` : `waits for ${peer} to log in`}`,
                  )
                }).pipe(
                  Effect.provide(
                    TransportRedis.layerRedis({ url: config.redisUrl, prefix: config.redisPrefix }),
                  ),
                ),
              ),
            ),
          ),
        )
      },
    )
}
