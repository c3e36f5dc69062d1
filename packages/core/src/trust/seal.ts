import {
  createCipheriv,
  createDecipheriv,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from "node:crypto"

/**
 * Sealing a secret to one recipient: X25519 with a fresh key of the sender, HKDF-SHA256, AES-256-GCM.
 * The peer puts a fresh X25519 public key (`box_key`) in each registration; the acceptance carries the
 * session token (and the peer's Redis password) sealed to it, so neither is ever readable in Redis.
 *
 * Sealed form (base64url): sender public key (32) | IV (12) | ciphertext | tag (16).
 */

const INFO = "picus sealed acceptance"

export interface BoxKeyPair {
  readonly privateKey: KeyObject
  /** base64url of the 32 raw public key bytes: the registration's `box_key`. */
  readonly publicKey: string
}

// Through JWK, whose `x` is the raw key in base64url: a DER export costs forty times as much.
const rawPublic = (key: KeyObject): string => key.export({ format: "jwk" }).x ?? ""

const publicFromRaw = (raw: Buffer): KeyObject =>
  createPublicKey({ key: { kty: "OKP", crv: "X25519", x: raw.toString("base64url") }, format: "jwk" })

export const newBoxKeyPair = (): BoxKeyPair => {
  const { privateKey, publicKey } = generateKeyPairSync("x25519")
  return { privateKey, publicKey: rawPublic(publicKey) }
}

const keyFor = (shared: Buffer, senderPublic: Buffer, recipientPublic: Buffer): Buffer =>
  Buffer.from(hkdfSync("sha256", shared, Buffer.concat([senderPublic, recipientPublic]), INFO, 32))

/** Seals `plaintext` to the holder of `recipient` (a base64url X25519 key); undefined if it is not one. */
export const seal = (recipient: string, plaintext: string): string | undefined => {
  const recipientRaw = Buffer.from(recipient, "base64url")
  if (recipientRaw.length !== 32 || !/^[A-Za-z0-9_-]+$/.test(recipient)) return undefined
  const sender = generateKeyPairSync("x25519")
  const senderRaw = Buffer.from(rawPublic(sender.publicKey), "base64url")
  let shared: Buffer
  try {
    // A low-order point is 32 bytes too, and its derivation fails: not a key to seal to.
    shared = diffieHellman({ privateKey: sender.privateKey, publicKey: publicFromRaw(recipientRaw) })
  } catch {
    return undefined
  }
  const iv = randomBytes(12)
  const cipher = createCipheriv("aes-256-gcm", keyFor(shared, senderRaw, recipientRaw), iv)
  const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()])
  return Buffer.concat([senderRaw, iv, body, cipher.getAuthTag()]).toString("base64url")
}

/** Opens what was sealed to `keys`; undefined if it was not, or was changed on the way. */
export const unseal = (keys: BoxKeyPair, sealed: string): string | undefined => {
  const raw = Buffer.from(sealed, "base64url")
  if (raw.length < 32 + 12 + 16) return undefined
  try {
    const senderRaw = raw.subarray(0, 32)
    const shared = diffieHellman({ privateKey: keys.privateKey, publicKey: publicFromRaw(senderRaw) })
    const key = keyFor(shared, senderRaw, Buffer.from(keys.publicKey, "base64url"))
    const decipher = createDecipheriv("aes-256-gcm", key, raw.subarray(32, 44))
    decipher.setAuthTag(raw.subarray(raw.length - 16))
    return Buffer.concat([decipher.update(raw.subarray(44, raw.length - 16)), decipher.final()]).toString(
      "utf8",
    )
  } catch {
    return undefined
  }
}
