import {
  createHash,
  createPrivateKey,
  createPublicKey,
  hkdfSync,
  type KeyObject,
  randomBytes,
  sign,
  verify,
} from "node:crypto"
import { appendTrailer, splitTrailer } from "../protocol/envelope.ts"

/**
 * Ed25519 keys as the project passes them around: a private key is its 32-byte seed and a public key
 * its 32 raw bytes, both base64url. The cluster key (held by every server instance, never in Redis or
 * PostgreSQL) signs what servers tell peers and, through HKDF, gives the session-token key; a peer's
 * identity key signs its registrations.
 */

const PKCS8_ED25519 = Buffer.from("302e020100300506032b657004220420", "hex")
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex")

const fromB64 = (text: string, bytes: number): Buffer | undefined => {
  if (!/^[A-Za-z0-9_-]+$/.test(text)) return undefined
  const raw = Buffer.from(text, "base64url")
  return raw.length === bytes ? raw : undefined
}

export interface SigningKey {
  readonly privateKey: KeyObject
  /** base64url of the 32 raw public key bytes. */
  readonly publicKey: string
}

/** A new private key (the base64url seed). */
export const newPrivateKey = (): string => randomBytes(32).toString("base64url")

/** The signing key of a base64url seed, or undefined if it is not one. */
export const signingKeyOf = (seed: string): SigningKey | undefined => {
  const raw = fromB64(seed.trim(), 32)
  if (raw === undefined) return undefined
  const privateKey = createPrivateKey({
    key: Buffer.concat([PKCS8_ED25519, raw]),
    format: "der",
    type: "pkcs8",
  })
  const spki = createPublicKey(privateKey).export({ format: "der", type: "spki" })
  return { privateKey, publicKey: spki.subarray(SPKI_ED25519.length).toString("base64url") }
}

const publicKeys = new Map<string, KeyObject>()

/** The public key object of a base64url raw key (cached: a peer checks one key many times). */
export const publicKeyOf = (publicKey: string): KeyObject | undefined => {
  const cached = publicKeys.get(publicKey)
  if (cached) return cached
  const raw = fromB64(publicKey, 32)
  if (raw === undefined) return undefined
  const key = createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: "der", type: "spki" })
  if (publicKeys.size > 1024) publicKeys.clear()
  publicKeys.set(publicKey, key)
  return key
}

/** What an operator compares: `sha256:` and the base64url SHA-256 of the raw public key. */
export const fingerprintOf = (publicKey: string): string =>
  `sha256:${createHash("sha256").update(Buffer.from(publicKey, "base64url")).digest("base64url")}`

/** The payload (a JSON object's text) with its signature appended as a trailing `sig` field. */
export const signPayload = (payload: string, key: SigningKey): string =>
  appendTrailer(payload, "sig", sign(null, Buffer.from(payload), key.privateKey).toString("base64url"))

/** Signs bytes that are not a payload (a key endorsement, say). */
export const signBytes = (data: string, key: SigningKey): string =>
  sign(null, Buffer.from(data), key.privateKey).toString("base64url")

export const verifyBytes = (data: string, signature: string, publicKey: string): boolean => {
  const key = publicKeyOf(publicKey)
  const sig = fromB64(signature, 64)
  return key !== undefined && sig !== undefined && verify(null, Buffer.from(data), key, sig)
}

export type SignatureCheck = "valid" | "unsigned" | "invalid"

/** Whether the payload ends with a valid signature by `publicKey`. */
export const checkSignature = (payload: string, publicKey: string): SignatureCheck => {
  const parts = splitTrailer(payload, "sig")
  if (parts === undefined) return "unsigned"
  return verifyBytes(parts.covered, parts.value, publicKey) ? "valid" : "invalid"
}

/** The key that session tokens are derived from, out of the cluster key's seed. */
export const sessionKeyOf = (seed: string): Uint8Array => {
  const raw = fromB64(seed.trim(), 32)
  if (raw === undefined) throw new Error("not a cluster key")
  return new Uint8Array(hkdfSync("sha256", raw, "picus", "session tokens", 32))
}
