import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  writeFileSync,
} from "node:fs"
import { dirname } from "node:path"
import { Trust } from "@picus/core"
import { Redacted } from "effect"

/**
 * The cluster key: an Ed25519 seed every server instance holds (and nothing else: not Redis, not
 * PostgreSQL). It signs every message a server writes for a peer, and session tokens derive from it
 * (Trust.sessionKeyOf), so any instance can check a peer's token, and take a session over.
 */
export interface ClusterKey {
  /** The seed, base64url; kept Redacted so that printing a config never shows it. */
  readonly seed: Redacted.Redacted<string>
  readonly signing: Trust.SigningKey
  /** base64url raw public key: what peers pin. */
  readonly publicKey: string
  readonly fingerprint: string
  /** After a rotation: the previous key, and its signature over this one's public key. */
  readonly previous?: {
    readonly publicKey: string
    readonly fingerprint: string
    /** Trust.signBytes("picus cluster key " + publicKey, previous key): a peer that pinned it re-pins. */
    readonly endorsement: string
  }
}

/** What a key endorsement signs: the new public key, in words no other signature of the cluster has. */
export const endorsementText = (publicKey: string): string => `picus cluster key ${publicKey}`

/** A seed that is not a cluster key. */
export class ClusterKeyError extends Error {
  override readonly name = "ClusterKeyError"
}

const signingOf = (seed: Redacted.Redacted<string>, where: string): Trust.SigningKey => {
  const signing = Trust.signingKeyOf(Redacted.value(seed))
  if (signing === undefined) {
    throw new ClusterKeyError(
      `${where} must hold a base64url 32-byte key (make one with \`picus cluster-key new\`)`,
    )
  }
  return signing
}

/** The cluster key of a seed (and of the previous one, after a rotation); throws ClusterKeyError naming `where`. */
export const clusterKeyOf = (
  seed: Redacted.Redacted<string>,
  previous?: { readonly seed: Redacted.Redacted<string>; readonly where: string },
  where = "the cluster key",
): ClusterKey => {
  const signing = signingOf(seed, where)
  const key: ClusterKey = {
    seed,
    signing,
    publicKey: signing.publicKey,
    fingerprint: Trust.fingerprintOf(signing.publicKey),
  }
  if (previous === undefined) return key
  const old = signingOf(previous.seed, previous.where)
  if (old.publicKey === signing.publicKey) return key
  return {
    ...key,
    previous: {
      publicKey: old.publicKey,
      fingerprint: Trust.fingerprintOf(old.publicKey),
      endorsement: Trust.signBytes(endorsementText(signing.publicKey), old),
    },
  }
}

/** A new cluster key (tests, and the embedded dev setup, make their own). */
export const newClusterKey = (): ClusterKey => clusterKeyOf(Redacted.make(Trust.newPrivateKey()))

/**
 * Reads a key file, refusing one that group or others may open: whoever reads it can sign as the
 * cluster. The mode is checked on the opened file, so it is the file read.
 */
export const readKeyFile = (path: string, what: string): Redacted.Redacted<string> => {
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY)
  } catch (error) {
    throw new ClusterKeyError(`${what} ${path} cannot be read: ${(error as Error).message}`)
  }
  try {
    const mode = fstatSync(fd).mode & 0o777
    if ((mode & 0o077) !== 0) {
      throw new ClusterKeyError(
        `${what} ${path} is open to group or others (mode ${mode.toString(8).padStart(4, "0")}): ` +
          `run \`chmod 600 ${path}\``,
      )
    }
    return Redacted.make(readFileSync(fd, "utf8").trim())
  } finally {
    closeSync(fd)
  }
}

/** Writes a new key file (mode 0600), never over an existing file: that would lose a key in use. */
export const writeNewKeyFile = (path: string): ClusterKey => {
  const key = newClusterKey()
  try {
    writeFileSync(path, `${Redacted.value(key.seed)}\n`, { mode: 0o600, flag: "wx" })
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new ClusterKeyError(
      code === "EEXIST"
        ? `${path} exists: not overwritten (a cluster key in use would be lost); choose another --out`
        : `cannot write ${path}: ${(error as Error).message}`,
    )
  }
  return key
}

/**
 * The key in `path`, made there first if there is none: for the embedded dev setup, which keeps its
 * cluster key in its state folder so that a restart keeps the peers' pinned key valid.
 */
export const keyFileOrNew = (path: string): ClusterKey => {
  if (existsSync(path)) return clusterKeyOf(readKeyFile(path, "the cluster key file"), undefined, path)
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 })
  return writeNewKeyFile(path)
}

/** What `cluster-key new` and `cluster-key show` print: never the seed. */
export const describeClusterKey = (key: ClusterKey): ReadonlyArray<string> => [
  `public key:  ${key.publicKey}`,
  `fingerprint: ${key.fingerprint}`,
  ...(key.previous
    ? [
        `previous public key:  ${key.previous.publicKey}`,
        `previous fingerprint: ${key.previous.fingerprint} (acceptances carry its endorsement)`,
      ]
    : []),
]
