import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { afterAll, beforeAll } from "vitest"
import { type RedisServer, startRedisServer } from "../src/testing/index.ts"
import {
  layerRedis,
  type RedisConnectionEvent,
  type RedisTlsOptions,
  redisTlsFromEnv,
} from "../src/transport/redis.ts"
import { Transport } from "../src/transport/Transport.ts"

/**
 * rediss:// against a private redis-server with TLS only (its plain port is off) that asks for a
 * client certificate: a CA of the test's own signs the server's certificate (for the name
 * redis.test only) and a client's; a second CA signs nothing of this server's.
 */

let dir = ""
let server: RedisServer | undefined
const file = (name: string) => join(dir, name)
const openssl = (...args: Array<string>) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" })

/** A CA's key and self-signed certificate. */
const makeCa = (name: string) => {
  openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`)
  openssl(
    "req",
    "-x509",
    "-new",
    "-key",
    `${name}.key`,
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-subj",
    `/CN=${name}`,
  )
}

/** A key and a certificate for `subject`, signed by the CA `ca`, with these subject names. */
const makeSigned = (name: string, ca: string, altNames: string, usage: string) => {
  openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", `${name}.key`)
  openssl("req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`)
  writeFileSync(file(`${name}.ext`), `subjectAltName=${altNames}\nextendedKeyUsage=${usage}\n`)
  openssl(
    "x509",
    "-req",
    "-in",
    `${name}.csr`,
    "-CA",
    `${ca}.crt`,
    "-CAkey",
    `${ca}.key`,
    "-CAcreateserial",
    "-out",
    `${name}.crt`,
    "-days",
    "2",
    "-extfile",
    `${name}.ext`,
  )
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "picus-tls-"))
  makeCa("ca")
  makeCa("other-ca")
  makeSigned("server", "ca", "DNS:redis.test", "serverAuth")
  makeSigned("client", "ca", "DNS:peer.test", "clientAuth")
  server = await startRedisServer((port) => [
    "--port",
    "0",
    "--tls-port",
    String(port),
    "--tls-cert-file",
    file("server.crt"),
    "--tls-key-file",
    file("server.key"),
    "--tls-ca-cert-file",
    file("ca.crt"),
    "--tls-auth-clients",
    "yes",
  ])
})

afterAll(async () => {
  await server?.stop()
  rmSync(dir, { recursive: true, force: true })
})

const url = () => `rediss://127.0.0.1:${server!.port}`
const client = () => ({ certFile: file("client.crt"), keyFile: file("client.key") })

/** Sends to an inbox and reads its tail back: it went through. */
const roundTrip = (tls: RedisTlsOptions) =>
  Effect.gen(function* () {
    const t = yield* Transport
    const id = yield* t.sendToPeer("p", "over tls")
    assert.strictEqual(yield* t.inboxTail("p"), id)
  }).pipe(Effect.scoped, Effect.provide(layerRedis({ url: url(), prefix: "tls", tls })))

/** The connection is refused: the command fails, and the reason told says why. */
const refused = (tls: RedisTlsOptions | undefined) =>
  Effect.gen(function* () {
    const events: Array<RedisConnectionEvent> = []
    const error = yield* Effect.gen(function* () {
      const t = yield* Transport
      return yield* Effect.flip(t.sendToPeer("p", "must not arrive"))
    }).pipe(
      Effect.scoped,
      Effect.provide(
        layerRedis({
          url: url(),
          prefix: "tls",
          ...(tls ? { tls } : {}),
          onConnection: (event) => events.push(event),
        }),
      ),
      Effect.timeout("20 seconds"),
    )
    assert.strictEqual(error._tag, "TransportError")
    return events.flatMap((e) => (e._tag === "Unreachable" ? [e.reason] : []))
  })

/** The layer fails to build (before any connection): its error. */
const refusedAtStart = (options: Parameters<typeof layerRedis>[0]) =>
  Effect.flip(Effect.scoped(Layer.build(layerRedis(options))))

describe("Redis over TLS", () => {
  it.live(
    "connects with the CA that signed the server's certificate, its name and a client certificate",
    () => roundTrip({ caFile: file("ca.crt"), servername: "redis.test", ...client() }),
  )

  it.live("refuses a server whose certificate the given CA did not sign", () =>
    Effect.gen(function* () {
      const reasons = yield* refused({ caFile: file("other-ca.crt"), servername: "redis.test", ...client() })
      assert.isTrue(
        reasons.some((r) => r.includes("not signed by a trusted CA")),
        reasons.join("; "),
      )
    }),
  )

  it.live("refuses it without a CA file too: the system's CAs did not sign it", () =>
    Effect.gen(function* () {
      const reasons = yield* refused({ servername: "redis.test", ...client() })
      assert.isTrue(reasons.length > 0)
    }),
  )

  it.live("refuses a certificate that does not carry the name asked for", () =>
    Effect.gen(function* () {
      const reasons = yield* refused({ caFile: file("ca.crt"), ...client() })
      assert.isTrue(
        reasons.some((r) => r.includes("does not name this host")),
        reasons.join("; "),
      )
    }),
  )

  it.live("a server that asks for a client certificate refuses a client without one", () =>
    Effect.gen(function* () {
      const reasons = yield* refused({ caFile: file("ca.crt"), servername: "redis.test" })
      assert.isTrue(reasons.length > 0)
    }),
  )

  it.live(
    "TLS options with a redis:// URL, or a certificate without its key, are refused before connecting",
    () =>
      Effect.gen(function* () {
        const plain = yield* refusedAtStart({ url: "redis://127.0.0.1:1", tls: { caFile: "x" } })
        assert.include(plain.message, "rediss://")
        const halfPair = yield* refusedAtStart({ url: url(), tls: { certFile: file("client.crt") } })
        assert.include(halfPair.message, "PICUS_REDIS_KEY")
        const missing = yield* refusedAtStart({ url: url(), tls: { caFile: file("nope.crt") } })
        assert.include(missing.message, "nope.crt")
      }),
  )

  it("reads its options from PICUS_REDIS_CA, PICUS_REDIS_SERVERNAME, PICUS_REDIS_CERT, PICUS_REDIS_KEY", () => {
    assert.isUndefined(redisTlsFromEnv({}))
    assert.deepStrictEqual(
      redisTlsFromEnv({
        PICUS_REDIS_CA: "/etc/ca.pem",
        PICUS_REDIS_SERVERNAME: "redis.internal",
        PICUS_REDIS_CERT: "/etc/c.pem",
        PICUS_REDIS_KEY: "/etc/k.pem",
      }),
      { caFile: "/etc/ca.pem", servername: "redis.internal", certFile: "/etc/c.pem", keyFile: "/etc/k.pem" },
    )
  })
})
