/** The operator's program: every command of `./picus` but the server and the peer themselves. */
import { cac } from "cac"
import { registerCancel } from "./commands/cancel.ts"
import { registerClusterKey } from "./commands/clusterKey.ts"
import { registerCompletion } from "./commands/completion.ts"
import { registerDeadLetters } from "./commands/deadletters.ts"
import { registerMigrate } from "./commands/migrate.ts"
import { registerOperatorTokens } from "./commands/operatorTokens.ts"
import { registerPackage } from "./commands/package.ts"
import { registerPeers } from "./commands/peers.ts"
import { registerReports } from "./commands/reports.ts"
import { registerRuns } from "./commands/runs.ts"
import { registerSubmit } from "./commands/submit.ts"
import { registerTokens } from "./commands/tokens.ts"
import { registerWatch } from "./commands/watch.ts"

export const operatorProgram = (name: string) => {
  const cli = cac(name)
  // Dispatched by main.ts before this program parses; listed here for --help.
  cli.command("server", "Run a server instance (see picus server --help)").allowUnknownOptions()
  cli.command("peer", "Run a peer on this machine (see picus peer --help)").allowUnknownOptions()
  registerTokens(cli)
  registerOperatorTokens(cli)
  registerPeers(cli)
  registerSubmit(cli)
  registerCancel(cli)
  registerWatch(cli)
  registerReports(cli)
  registerRuns(cli)
  registerDeadLetters(cli)
  registerClusterKey(cli)
  registerMigrate(cli)
  registerCompletion(cli, async () => [
    { words: [], cli },
    { words: ["server"], cli: (await import("server/program")).serverProgram("picus server") },
    { words: ["peer"], cli: (await import("peer/program")).peerProgram("picus peer") },
  ])
  registerPackage(cli)
  return cli
}
