import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** A CA, a server certificate it signed for these host names, and a second CA that signed nothing. */
export interface Certificates {
  readonly ca: string
  readonly otherCa: string
  readonly cert: string
  readonly key: string
  readonly cleanup: () => void
}

/** Made with openssl in a temporary folder (files: PEM). */
export const makeCertificates = (hostNames: ReadonlyArray<string>): Certificates => {
  const dir = mkdtempSync(join(tmpdir(), "picus-certs-"))
  const openssl = (...args: Array<string>) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" })
  for (const ca of ["ca", "other-ca"]) {
    openssl(
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-days",
      "2",
      "-subj",
      `/CN=picus test ${ca}`,
      "-keyout",
      `${ca}.key`,
      "-out",
      `${ca}.crt`,
    )
  }
  openssl(
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-subj",
    `/CN=${hostNames[0]}`,
    "-keyout",
    "server.key",
    "-out",
    "server.csr",
  )
  const names = hostNames.map((h) => (/^[\d.]+$/.test(h) ? `IP:${h}` : `DNS:${h}`))
  writeFileSync(join(dir, "ext.cnf"), `subjectAltName=${names.join(",")}\n`)
  openssl(
    "x509",
    "-req",
    "-in",
    "server.csr",
    "-CA",
    "ca.crt",
    "-CAkey",
    "ca.key",
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    "ext.cnf",
    "-out",
    "server.crt",
  )
  return {
    ca: join(dir, "ca.crt"),
    otherCa: join(dir, "other-ca.crt"),
    cert: join(dir, "server.crt"),
    key: join(dir, "server.key"),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  }
}
