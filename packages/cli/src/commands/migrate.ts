/** `picus migrate`: apply pending database migrations. */
import type { CAC } from "cac"
import { Console } from "effect"
import { resolveServerConfig, type ServerFlags, sharedOptions, withStore } from "server"
import { run } from "../support.ts"

export const registerMigrate = (cli: CAC): void => {
  sharedOptions(cli.command("migrate", "Apply pending database migrations and exit")).action(
    (flags: ServerFlags) => run(withStore(resolveServerConfig(flags), Console.log("migrations applied"))),
  )
}
