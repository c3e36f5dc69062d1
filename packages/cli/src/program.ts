/** The operator's program: every command of `./picus` but the server and the peer themselves. */
import { cac } from "cac"
import { registerClusterKey } from "./commands/clusterKey.ts"
import { registerDeadLetters } from "./commands/deadletters.ts"
import { registerMigrate } from "./commands/migrate.ts"
import { registerPackage } from "./commands/package.ts"
import { registerReports } from "./commands/reports.ts"
import { registerRuns } from "./commands/runs.ts"
import { registerSeedPeers } from "./commands/seedPeers.ts"
import { registerSubmit } from "./commands/submit.ts"
import { registerTokens } from "./commands/tokens.ts"

export const operatorProgram = (name: string) => {
  const cli = cac(name)
  // Dispatched by main.ts before this program parses; listed here for --help.
  cli.command("server", "Run a server instance (see picus server --help)").allowUnknownOptions()
  cli.command("peer", "Run a peer on this machine (see picus peer --help)").allowUnknownOptions()
  registerTokens(cli)
  registerSeedPeers(cli)
  registerSubmit(cli)
  registerReports(cli)
  registerRuns(cli)
  registerDeadLetters(cli)
  registerClusterKey(cli)
  registerMigrate(cli)
  registerPackage(cli)
  return cli
}
