/** `picus operator-token create|list|revoke`: the HTTP API's tokens (read or admin), apart from enrollment tokens. */
import { OperatorScope, OperatorTokenStore } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect, Schema } from "effect"
import {
  ConfigError,
  createOperatorToken,
  printRows,
  resolveServerConfig,
  type ServerFlags,
  sharedOptions,
  withStore,
} from "server"
import { run } from "../support.ts"

const isScope = Schema.is(OperatorScope)
const iso = (ms: number | null) => (ms === null ? "" : new Date(ms).toISOString())

export const registerOperatorTokens = (cli: CAC): void => {
  sharedOptions(
    cli.command(
      "operator-token <action> [target]",
      "HTTP API tokens: create --name n --scope read|admin, list, revoke <id|prefix>",
    ),
  )
    .option("--name <name>", "A label for a new token", { default: "operator" })
    .option("--scope <scope>", "read (reads the API) or admin (also submits and cancels)", {
      default: "read",
    })
    .option("--json", "Machine-readable output")
    .example("picus operator-token create --name grafana --scope read")
    .action(
      (
        action: string,
        target: string | undefined,
        flags: ServerFlags & { name: string; scope: string; json?: boolean },
      ) => {
        const config = resolveServerConfig(flags)
        switch (action) {
          case "create": {
            const scope = String(flags.scope)
            if (!isScope(scope))
              return run(Effect.fail(new ConfigError(`--scope takes read or admin, got "${scope}"`)))
            const name = String(flags.name).trim()
            if (name.length === 0 || name.length > 128)
              return run(Effect.fail(new ConfigError("--name takes 1 to 128 characters")))
            return run(
              withStore(
                config,
                Effect.gen(function* () {
                  const { secret, info } = yield* createOperatorToken(name, scope)
                  if (flags.json)
                    return yield* Console.log(
                      JSON.stringify({ token: secret, id: info.tokenId, name: info.name, scope: info.scope }),
                    )
                  yield* Console.log(secret)
                  yield* Console.error(
                    `operator token ${info.tokenId} (${info.name}, ${info.scope}) created; it is shown only this once`,
                  )
                }),
              ),
            )
          }
          case "list":
            return run(
              withStore(
                config,
                Effect.gen(function* () {
                  const tokens = yield* (yield* OperatorTokenStore).listOperatorTokens
                  printRows(
                    tokens.map((t) => ({
                      id: t.tokenId,
                      name: t.name,
                      scope: t.scope,
                      prefix: t.prefix,
                      created: iso(t.createdAt),
                      last_used: iso(t.lastUsedAt),
                      revoked: iso(t.revokedAt),
                    })),
                    flags.json === true,
                  )
                }),
                false,
                true,
              ),
            )
          case "revoke":
            if (!target)
              return run(Effect.fail(new ConfigError("operator-token revoke needs a token id or prefix")))
            return run(
              withStore(
                config,
                Effect.gen(function* () {
                  const revoked = yield* (yield* OperatorTokenStore).revokeOperatorToken(target)
                  if (revoked.length === 0)
                    return yield* Effect.fail(new ConfigError(`no active operator token matches "${target}"`))
                  yield* Console.log(`revoked ${revoked.length} operator token(s)`)
                }),
              ),
            )
          default:
            return run(
              Effect.fail(
                new ConfigError(`unknown operator-token action "${action}" (create, list, revoke)`),
              ),
            )
        }
      },
    )
}
