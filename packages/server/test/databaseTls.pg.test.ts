import { readFileSync } from "node:fs"
import { Effect, Exit, Schema } from "effect"
import { sql } from "slonik"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { makeCertificates } from "../../../e2e/support/certificates.ts"
import { type PrivatePostgres, postgresBinDir, startPrivatePostgres } from "../../../e2e/support/postgres.ts"
import { makePool } from "../src/db/pool.ts"
import { databaseTlsOf } from "../src/db/tls.ts"

// TLS to PostgreSQL with a server of the test's own that takes TLS connections only. The certificate
// names `localhost` alone, so connecting to 127.0.0.1 tells verify-full (host checked) from verify-ca.

const SslRow = Schema.toStandardSchemaV1(Schema.Struct({ ssl: Schema.Boolean }))

describe.skipIf(postgresBinDir() === undefined)("PostgreSQL over TLS (sslmode)", () => {
  let pg: PrivatePostgres
  const certs = makeCertificates(["localhost"])
  beforeAll(async () => {
    pg = await startPrivatePostgres({
      files: {
        "server.crt": readFileSync(certs.cert, "utf8"),
        "server.key": readFileSync(certs.key, "utf8"),
      },
      settings: ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"],
      hba: [
        "hostssl all all 127.0.0.1/32 trust",
        "hostnossl all all 127.0.0.1/32 reject",
        "local all all trust",
      ],
    })
  })
  afterAll(() => {
    pg?.stop()
    certs.cleanup()
  })

  const url = (host: string, params: string) => {
    const base = new URL(pg.url)
    base.hostname = host
    return `${base.toString()}?${params}`
  }
  /** Whether this connection is encrypted, as the server sees it; fails if it cannot connect. */
  const encrypted = (databaseUrl: string) =>
    Effect.runPromiseExit(
      Effect.scoped(
        Effect.gen(function* () {
          const pool = yield* makePool(databaseUrl, { maxPoolSize: 1, connectionTimeoutMs: 5_000 })
          return yield* Effect.promise(() =>
            pool.oneFirst(sql.type(SslRow)`select ssl from pg_stat_ssl where pid = pg_backend_pid()`),
          )
        }),
      ),
    )

  it("verify-full with the right CA and host name connects, encrypted", async () => {
    const exit = await encrypted(url("localhost", `sslmode=verify-full&sslrootcert=${certs.ca}`))
    expect(exit).toEqual(Exit.succeed(true))
  })

  it("a server this CA did not sign is refused", async () => {
    const exit = await encrypted(url("localhost", `sslmode=verify-full&sslrootcert=${certs.otherCa}`))
    expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/self-signed|unable to verify|certificate/i)
  })

  it("verify-full checks the host name; verify-ca does not", async () => {
    const full = await encrypted(url("127.0.0.1", `sslmode=verify-full&sslrootcert=${certs.ca}`))
    expect(Exit.isFailure(full) && String(full.cause)).toMatch(
      /IP: 127\.0\.0\.1 is not in the cert|altnames/i,
    )
    expect(await encrypted(url("127.0.0.1", `sslmode=verify-ca&sslrootcert=${certs.ca}`))).toEqual(
      Exit.succeed(true),
    )
  })

  it("without TLS this server refuses the connection (so the tests above really used TLS)", async () => {
    const exit = await encrypted(url("localhost", "sslmode=disable"))
    expect(Exit.isFailure(exit) && String(exit.cause)).toMatch(/no encryption|pg_hba/i)
  })

  it("a mode that would not verify what it claims is named, with the fix", () => {
    expect(() => databaseTlsOf("postgres://h/db?sslmode=verify-full")).toThrow(/needs sslrootcert/)
    expect(() => databaseTlsOf("postgres://h/db?sslmode=prefer")).toThrow(
      /not one of disable, require, verify-ca, verify-full/,
    )
  })
})
