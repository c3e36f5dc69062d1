import { readFileSync } from "node:fs"
import type { ConnectionOptions } from "node:tls"

/**
 * TLS to PostgreSQL, from the libpq parameters of the database URL, with libpq's meaning:
 *
 *   sslmode=disable      no TLS (the default, as for a local socket or 127.0.0.1)
 *   sslmode=require      TLS; the certificate is checked only if sslrootcert is given (verify-ca)
 *   sslmode=verify-ca    TLS; the certificate must chain to sslrootcert
 *   sslmode=verify-full  TLS; as verify-ca, and it must name the host connected to
 *   sslrootcert=<file>   the CA certificate(s), PEM; sslcert=<file> sslkey=<file>: a client certificate
 *
 * Slonik knows only some of these (and reads the CA without using it), so they are taken out of the
 * URL here and handed to the driver as its `ssl` option.
 */

export type SslMode = "disable" | "require" | "verify-ca" | "verify-full"
const MODES: ReadonlyArray<SslMode> = ["disable", "require", "verify-ca", "verify-full"]

export class DatabaseTlsError extends Error {
  override readonly name = "DatabaseTlsError"
}

export interface DatabaseTls {
  /** The URL without the TLS parameters. */
  readonly url: string
  /** The driver's `ssl` option; undefined means no TLS. */
  readonly ssl: ConnectionOptions | undefined
  readonly mode: SslMode
}

const readPem = (what: string, path: string): string => {
  try {
    return readFileSync(path, "utf8")
  } catch (error) {
    const code = (error as { code?: string }).code ?? "unreadable"
    throw new DatabaseTlsError(`cannot read ${what} ${path} (${code}): fix the path in DATABASE_URL`)
  }
}

export const databaseTlsOf = (databaseUrl: string): DatabaseTls => {
  let parsed: URL
  try {
    parsed = new URL(databaseUrl)
  } catch {
    return { url: databaseUrl, ssl: undefined, mode: "disable" }
  }
  const params = parsed.searchParams
  const given = params.get("sslmode") ?? "disable"
  if (!MODES.includes(given as SslMode)) {
    throw new DatabaseTlsError(
      `sslmode=${given} in DATABASE_URL is not one of ${MODES.join(", ")} (verify-full checks the server best)`,
    )
  }
  const rootCert = params.get("sslrootcert")
  const cert = params.get("sslcert")
  const key = params.get("sslkey")
  for (const name of ["sslmode", "sslrootcert", "sslcert", "sslkey"]) params.delete(name)
  const url = parsed.toString()
  const mode = given as SslMode
  if (mode === "disable") return { url, ssl: undefined, mode }
  if ((cert === null) !== (key === null)) {
    throw new DatabaseTlsError("DATABASE_URL gives sslcert without sslkey or the other way round: give both")
  }
  if ((mode === "verify-ca" || mode === "verify-full") && rootCert === null) {
    throw new DatabaseTlsError(`sslmode=${mode} needs sslrootcert=<CA file> in DATABASE_URL`)
  }
  const verify = mode !== "require" || rootCert !== null
  const ssl: ConnectionOptions = {
    rejectUnauthorized: verify,
    ...(rootCert === null ? {} : { ca: readPem("the CA file (sslrootcert)", rootCert) }),
    ...(cert === null || key === null
      ? {}
      : {
          cert: readPem("the client certificate (sslcert)", cert),
          key: readPem("the client key (sslkey)", key),
        }),
    // verify-ca checks the chain only, as libpq does.
    ...(mode === "verify-full" ? {} : { checkServerIdentity: () => undefined }),
  }
  return { url, ssl, mode }
}
