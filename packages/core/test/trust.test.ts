import { createHmac } from "node:crypto"
import { describe, expect, it } from "@effect/vitest"
import { Result } from "effect"
import * as Protocol from "../src/protocol/index.ts"
import { redisPasswordHash, redisPasswordOf } from "../src/secrets.ts"
import * as Trust from "../src/trust/index.ts"

const payload = JSON.stringify({ msg: "shutdown", token: "s-1", reason: "Upgrade server" })

describe("cluster signatures", () => {
  const key = Trust.signingKeyOf(Trust.newPrivateKey())!
  const other = Trust.signingKeyOf(Trust.newPrivateKey())!

  it("a signed payload is still the same JSON, with a sig field a seed reader ignores", () => {
    const signed = Trust.signPayload(payload, key)
    expect(JSON.parse(signed)).toMatchObject(JSON.parse(payload))
    expect(Trust.checkSignature(signed, key.publicKey)).toBe("valid")
  })

  it("refuses an unsigned, a changed, or a foreign-signed payload", () => {
    const signed = Trust.signPayload(payload, key)
    expect(Trust.checkSignature(payload, key.publicKey)).toBe("unsigned")
    expect(Trust.checkSignature(signed.replace("Upgrade", "Downgr"), key.publicKey)).toBe("invalid")
    expect(Trust.checkSignature(Trust.signPayload(payload, other), key.publicKey)).toBe("invalid")
    // A signature moved onto another message does not verify either.
    const sig = JSON.parse(signed).sig as string
    const moved = Protocol.appendTrailer(
      JSON.stringify({ msg: "shutdown", token: "s-2", reason: "x" }),
      "sig",
      sig,
    )
    expect(Trust.checkSignature(moved, key.publicKey)).toBe("invalid")
  })

  it("the same seed gives the same keys; fingerprints tell keys apart", () => {
    const seed = Trust.newPrivateKey()
    expect(Trust.signingKeyOf(seed)!.publicKey).toBe(Trust.signingKeyOf(seed)!.publicKey)
    expect(Trust.fingerprintOf(key.publicKey)).not.toBe(Trust.fingerprintOf(other.publicKey))
    expect(Buffer.from(Trust.sessionKeyOf(seed))).toEqual(Buffer.from(Trust.sessionKeyOf(seed)))
    expect(Trust.signingKeyOf("not a key")).toBeUndefined()
  })
})

describe("session MACs", () => {
  it("checks the MAC under the session token, in constant time, and refuses changes", () => {
    const maced = Trust.macPayload(payload, "session_abc")
    expect(Trust.checkMac(maced, "session_abc")).toBe("valid")
    expect(Trust.checkMac(maced, "session_abd")).toBe("invalid")
    expect(Trust.checkMac(maced.replace("Upgrade", "Downgr"), "session_abc")).toBe("invalid")
    expect(Trust.checkMac(payload, "session_abc")).toBe("missing")
  })
  it("server -> peer MACs: under the key derived from the token, which is neither the token nor a peer's MAC", () => {
    const payload = '{"msg":"heartbeat","peer_id":"p","token":"session_abc"}'
    const key = Trust.serverToPeerKey("session_abc")
    // The wire's rule (docs/protocol.md): HMAC-SHA256 under the token of "picus: server to peer".
    expect(key).toBe(createHmac("sha256", "session_abc").update("picus: server to peer").digest("base64url"))
    expect(key).not.toBe("session_abc")
    expect(Trust.serverToPeerKey("session_abc")).toBe(key)
    // Derived once and MACed under, or derived per message: the same MAC, checked by the peer.
    expect(Trust.macPayload(payload, key)).toBe(Trust.macFromServer(payload, "session_abc"))
    expect(Trust.checkMacFromServer(Trust.macPayload(payload, key), "session_abc")).toBe("valid")
    // A message MACed under the token itself (what the peer sends) does not pass for the server's.
    expect(Trust.checkMacFromServer(Trust.macPayload(payload, "session_abc"), "session_abc")).toBe("invalid")
    expect(Trust.checkMacFromServer(Trust.macPayload(payload, key), "session_abd")).toBe("invalid")
  })
})

describe("sealing", () => {
  it("only the holder of the box key opens what was sealed to it", () => {
    const box = Trust.newBoxKeyPair()
    const sealed = Trust.seal(box.publicKey, '{"token":"session_x"}')!
    expect(Trust.unseal(box, sealed)).toBe('{"token":"session_x"}')
    expect(Trust.unseal(Trust.newBoxKeyPair(), sealed)).toBeUndefined()
    const flipped = Buffer.from(sealed, "base64url")
    flipped[flipped.length - 20]! ^= 1
    expect(Trust.unseal(box, flipped.toString("base64url"))).toBeUndefined()
    expect(Trust.seal("short", "x")).toBeUndefined()
  })

  it("refuses a low-order point (its derivation fails) instead of throwing", () => {
    // Any 32 bytes pass the wire schema; these two are points of small order.
    expect(Trust.seal(Buffer.alloc(32).toString("base64url"), "x")).toBeUndefined()
    expect(Trust.seal(Buffer.from([1, ...Array(31).fill(0)]).toString("base64url"), "x")).toBeUndefined()
  })
})

describe("enrollment strings", () => {
  it("round-trip, and say what is wrong without quoting the secret", () => {
    const text = Trust.encodeEnrollment({ token: "picus_secret", clusterKey: "k".repeat(43), redisUser: "u" })
    expect(Result.getOrThrow(Trust.decodeEnrollment(text))).toEqual({
      token: "picus_secret",
      clusterKey: "k".repeat(43),
      redisUser: "u",
    })
    const damaged = Trust.decodeEnrollment(`${text.slice(0, 20)}!!`)
    expect(Result.isFailure(damaged) && damaged.failure).toMatch(/damaged/)
    expect(Result.isFailure(Trust.decodeEnrollment("picus_secret"))).toBe(true)
  })
})

describe("redaction", () => {
  it("hides secrets pasted anywhere in a line", () => {
    const token = "picus_3q2X9vLmN0pQrStUvWxYz0123456789abcdefghij"
    const line = Trust.redactSecrets(`register refused for peer ${token} from x`)
    expect(line).not.toContain(token.slice(6))
    expect(line).toContain("[picus secret]")
    expect(Trust.redactSecrets("peer web-1 ok")).toBe("peer web-1 ok")
  })
})

describe("Redis passwords", () => {
  it("derive from the token, and Redis and PostgreSQL keep only their SHA-256", () => {
    expect(redisPasswordOf("picus_a")).toBe(redisPasswordOf("picus_a"))
    expect(redisPasswordOf("picus_a")).not.toBe(redisPasswordOf("picus_b"))
    expect(redisPasswordHash("x")).toMatch(/^[0-9a-f]{64}$/)
  })
})
