import { readFileSync } from "node:fs"
import { Trust } from "@picus/core"
import { ConfigError } from "./config.ts"

/**
 * The cluster's public key, from its private seed (PICUS_CLUSTER_KEY, or the file named by
 * PICUS_CLUSTER_KEY_FILE); undefined when neither is set. Throws ConfigError for a seed that is not
 * one (never quoting it). The one place this module reads the cluster key.
 */
export const clusterPublicKey = (env: NodeJS.ProcessEnv = process.env): string | undefined => {
  const file = env.PICUS_CLUSTER_KEY_FILE?.trim()
  let seed = env.PICUS_CLUSTER_KEY?.trim()
  if ((seed === undefined || seed === "") && file) {
    try {
      seed = readFileSync(file, "utf8").trim()
    } catch (error) {
      throw new ConfigError(
        `cannot read PICUS_CLUSTER_KEY_FILE ${file}: ${error instanceof Error ? error.message : String(error)}`,
      )
    }
  }
  if (seed === undefined || seed === "") return undefined
  const key = Trust.signingKeyOf(seed)
  if (key === undefined)
    throw new ConfigError("PICUS_CLUSTER_KEY must be a base64url 32-byte seed (the cluster's private key)")
  return key.publicKey
}
