// What other packages (the load generator, the benchmark, the `make dev` harness) use of the
// server, with the errors and types their signatures name.
export { OPEN_MODE_WARNING, PeerAccess } from "./access/PeerAccess.ts"
export { cancelRun, cancelTickets } from "./cancel.ts"
export { CatalogError, loadCatalog } from "./catalog.ts"
export {
  type ClusterKey,
  ClusterKeyError,
  describeClusterKey,
  keyFileOrNew,
  newClusterKey,
  writeNewKeyFile,
} from "./clusterKey.ts"
export {
  ConfigError,
  DEFAULT_SHUTDOWN_REASON,
  requireClusterKey,
  resolveServerConfig,
  type ServerConfig,
  type ServerFlags,
} from "./config.ts"
export { defaultDataDir, EMBEDDED_POOL_OPTIONS, serveEmbedded } from "./db/embedded.ts"
export { ensureDatabase } from "./db/ensureDatabase.ts"
export { PgStore } from "./db/PgStore.ts"
export {
  COUNTERS_LINE_PREFIX,
  countersLine,
  type StatementCounts,
  statementCounts,
  statementKey,
} from "./db/statementCounter.ts"
export { addSeedPeer, createToken, OPERATOR, revokeTokens } from "./enrollment.ts"
export { sharedOptions } from "./flags.ts"
export { type Gateway, GatewayFailed, gatewayConfigFrom, makeGateway, untilSignal } from "./gateway/index.ts"
export { MAX_REGISTER_SKEW_MS } from "./gateway/Registration.ts"
export {
  isUsageError,
  readOnlyStoreLayer,
  redisDbOf,
  redisOf,
  redisUrlFor,
  storeLayer,
  transportLayer,
  withExistingStore,
  withRedisUsers,
  withStore,
} from "./layers.ts"
export { authenticateOperator, createOperatorToken, OPERATOR_TOKEN_KIND } from "./operatorTokens.ts"
export { serve, serverProgram } from "./program.ts"
export { printRows } from "./report.ts"
export { advanceRuns, notifyHolders, startRun, sweepRuns } from "./runs.ts"
export { InvalidJob, type Submission, submitJobs, validateSubmission } from "./submit.ts"
