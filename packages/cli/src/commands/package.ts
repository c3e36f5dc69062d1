/**
 * `picus package [--deb]`: the peer as one executable per Linux architecture (Node's single
 * executable applications), and with --deb a Debian package of it. The build's modules (rolldown,
 * postject) load only for this command.
 */
import { fileURLToPath } from "node:url"
import { UsageError } from "@picus/core"
import type { CAC } from "cac"
import { Console, Effect } from "effect"
import { run } from "../support.ts"

const repoRoot = fileURLToPath(new URL("../../../..", import.meta.url))

interface PackageFlags {
  readonly arch?: string
  readonly deb?: boolean
  readonly out?: string
  readonly runAs?: string
  readonly compression?: string
}

const listOf = (value: string | undefined, allowed: ReadonlyArray<string>, flag: string) => {
  const given = (value ?? allowed.join(","))
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
  const unknown = given.filter((a) => !allowed.includes(a))
  if (unknown.length > 0 || given.length === 0)
    throw new UsageError(`${flag} takes ${allowed.join(", ")} (comma separated), got "${value}"`)
  return [...new Set(given)]
}

const oneOf = <A extends string>(value: string | undefined, allowed: ReadonlyArray<A>, flag: string): A => {
  const v = value ?? allowed[0]!
  if (!(allowed as ReadonlyArray<string>).includes(v))
    throw new UsageError(`${flag} takes ${allowed.join(" or ")}, got "${value}"`)
  return v as A
}

export const registerPackage = (cli: CAC): void => {
  cli
    .command(
      "package",
      "Build the peer as one executable for Linux x64 and arm64 (needs no Node on the machine); --deb: Debian packages of it",
    )
    .option("--arch <list>", "x64, arm64 or both, comma separated (default both)")
    .option("--deb", "Also build picus-peer_<version>_<arch>.deb (dpkg-deb)")
    .option("--out <dir>", "Where to put them (default dist/ in the repository)")
    .option(
      "--run-as <user>",
      "--deb: the service's user, picus (made on install, the default) or root (jobs that need root)",
    )
    .option("--compression <kind>", "--deb: xz (smallest, the default) or gzip (faster to build)")
    .example("picus package --deb --arch x64")
    .action((flags: PackageFlags) =>
      run(
        Effect.gen(function* () {
          const arches = yield* Effect.try({
            try: () => listOf(flags.arch, ["x64", "arm64"], "--arch") as ReadonlyArray<"x64" | "arm64">,
            catch: (error) => error,
          })
          const runAs = yield* Effect.try({
            try: () => oneOf(flags.runAs, ["picus", "root"] as const, "--run-as"),
            catch: (error) => error,
          })
          const compression = yield* Effect.try({
            try: () => oneOf(flags.compression, ["xz", "gzip"] as const, "--compression"),
            catch: (error) => error,
          })
          const outDir = flags.out === undefined ? `${repoRoot}dist` : String(flags.out)
          const workDir = `${repoRoot}node_modules/.cache/picus-package`
          const built = yield* Effect.tryPromise({
            try: async () => {
              const { buildPeerExecutables } = await import("../packaging/sea.ts")
              return buildPeerExecutables({ arches, outDir, workDir, log: console.log })
            },
            catch: (error) => error,
          })
          if (flags.deb !== true) return
          const { buildDeb } = yield* Effect.promise(() => import("../packaging/deb.ts"))
          for (const peer of built) {
            const deb = yield* Effect.try({
              try: () =>
                buildDeb({ arch: peer.arch, executable: peer.file, outDir, workDir, runAs, compression }),
              catch: (error) => error,
            })
            yield* Console.log(`built ${deb}`)
          }
        }),
      ),
    )
}
