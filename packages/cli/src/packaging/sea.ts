/**
 * The packaged peer: one executable per Linux architecture, made with Node's single executable
 * applications (SEA). The peer bundled into one script (peerBundle.ts) becomes a SEA blob
 * (`node --experimental-sea-config`, Node 24 has no `--build-sea`), injected with postject into
 * a copy of the target architecture's node binary, taken from the npm registry's
 * `node-linux-<arch>` package of the builder's own Node version (a blob is read only by the
 * version that made it). No snapshot and no code cache: both are tied to the builder's
 * architecture, and the blob is the same for x64 and arm64.
 */
import { execFileSync } from "node:child_process"
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from "node:fs"
import { arch as hostArch } from "node:os"
import { join } from "node:path"
import { inject } from "postject"
import { bundlePeer } from "./peerBundle.ts"

export const ARCHES = ["x64", "arm64"] as const
export type Arch = (typeof ARCHES)[number]

/** The node binary's fuse that postject flips to say a blob is injected (Node's documented value). */
const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2"

/**
 * V8 and Node flags the executable starts with. An idle peer keeps a few MiB of live objects: a
 * small young generation (semi-space) and a capped old one keep the heap near that instead of
 * growing it for throughput; a job's output is capped (--output-cap), so a peer never needs much.
 * `--lite-mode` (no optimizing compilers, feedback allocated lazily, no WebAssembly, which the
 * bundle never uses) takes about 5 MiB off an idle peer and costs a job nothing measurable: a
 * peer's own work per job is a few messages, the shell it spawns is the rest (docs/performance.md).
 */
export const PEER_EXEC_ARGV: ReadonlyArray<string> = [
  "--max-semi-space-size=1",
  "--max-old-space-size=64",
  "--lite-mode",
]

export class PackagingError extends Error {
  override readonly name = "PackagingError"
}

/** How a fetch from the registry is tried: the pauses before each try after the first. */
export interface FetchRetries {
  readonly pausesMs: ReadonlyArray<number>
  /** Told of each failed try that is tried again. */
  readonly log?: (line: string) => void
}

/** Three tries, 2 s and then 5 s apart: a registry that fails now and then rarely fails twice running. */
export const DEFAULT_FETCH_RETRIES: FetchRetries = { pausesMs: [2_000, 5_000] }

/** Blocks this thread for `ms` (the packaging is a synchronous command, run by hand or by a test). */
const pause = (ms: number) => {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** npm's own error lines when it printed any (`npm error code ETARGET`, ...), else the failure's message. */
const reasonOf = (cause: unknown): string => {
  const stderr = (cause as { stderr?: unknown } | undefined)?.stderr
  const said =
    typeof stderr === "string"
      ? stderr
          .split("\n")
          .filter((l) => l.startsWith("npm error") && !l.includes("complete log of this run"))
          .slice(0, 3)
          .join("; ")
      : ""
  return said !== "" ? said : cause instanceof Error ? cause.message : String(cause)
}

/** The node binary of `arch`, at the builder's version: this one when it matches, else from npm. */
export const nodeBinaryFor = (
  arch: Arch,
  cacheDir: string,
  retries: FetchRetries = DEFAULT_FETCH_RETRIES,
): string => {
  const version = process.versions.node
  if (arch === hostArch() && process.execPath.includes(`node-linux-${arch}`)) return process.execPath
  const dir = join(cacheDir, `node-linux-${arch}-${version}`)
  const binary = join(dir, "package", "bin", "node")
  if (existsSync(binary)) return binary
  mkdirSync(dir, { recursive: true })
  const spec = `node-linux-${arch}@${version}`
  const tries = retries.pausesMs.length + 1
  for (let attempt = 0; attempt < tries; attempt++) {
    if (attempt > 0) pause(retries.pausesMs[attempt - 1] ?? 0)
    try {
      // An exact version never changes: npm's cache answers without asking the registry when it can.
      const tarball = execFileSync(
        "npm",
        ["pack", "--loglevel=error", "--prefer-offline", "--pack-destination", dir, spec],
        { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] },
      ).trim()
      execFileSync("tar", [
        "-xzf",
        join(dir, tarball.split("\n").at(-1) ?? ""),
        "-C",
        dir,
        "package/bin/node",
      ])
      rmSync(join(dir, tarball), { force: true })
      break
    } catch (cause) {
      if (attempt + 1 === tries)
        throw new PackagingError(
          `could not fetch ${spec} from the npm registry (npm pack ${spec}, ${tries} tries): ${reasonOf(cause)}`,
          { cause },
        )
      retries.log?.(
        `npm pack ${spec} failed (${reasonOf(cause).split("\n")[0]}); trying again in ${retries.pausesMs[attempt] ?? 0} ms`,
      )
    }
  }
  if (!existsSync(binary)) throw new PackagingError(`${spec} holds no package/bin/node`)
  return binary
}

export interface BuiltPeer {
  readonly arch: Arch
  readonly file: string
  readonly bytes: number
}

/** Builds `picus-peer-linux-<arch>` for each arch into `outDir`; `workDir` keeps the npm downloads. */
export const buildPeerExecutables = async (options: {
  readonly arches: ReadonlyArray<Arch>
  readonly outDir: string
  readonly workDir: string
  readonly log: (line: string) => void
}): Promise<ReadonlyArray<BuiltPeer>> => {
  const { outDir, workDir, log } = options
  mkdirSync(outDir, { recursive: true })
  mkdirSync(workDir, { recursive: true })
  const script = join(workDir, "peer.cjs")
  const scriptBytes = await bundlePeer(script)
  log(`bundled the peer: ${script} (${(scriptBytes / 1024).toFixed(0)} KiB)`)
  const blob = join(workDir, "peer.blob")
  const config = join(workDir, "sea-config.json")
  writeFileSync(
    config,
    JSON.stringify({
      main: script,
      output: blob,
      disableExperimentalSEAWarning: true,
      useSnapshot: false,
      useCodeCache: false,
      execArgv: PEER_EXEC_ARGV,
    }),
  )
  execFileSync(process.execPath, ["--experimental-sea-config", config], {
    stdio: ["ignore", "ignore", "inherit"],
  })
  const blobData = readFileSync(blob)
  const built: Array<BuiltPeer> = []
  for (const arch of options.arches) {
    const node = nodeBinaryFor(arch, workDir, { ...DEFAULT_FETCH_RETRIES, log })
    const file = join(outDir, `picus-peer-linux-${arch}`)
    const partial = `${file}.partial`
    copyFileSync(node, partial)
    chmodSync(partial, 0o755)
    await inject(partial, "NODE_SEA_BLOB", blobData, { sentinelFuse: SEA_FUSE })
    renameSync(partial, file)
    const bytes = readFileSync(file).byteLength
    log(
      `built ${file} (${(bytes / 1048576).toFixed(0)} MiB, node ${process.versions.node} for linux ${arch})`,
    )
    built.push({ arch, file, bytes })
  }
  return built
}
