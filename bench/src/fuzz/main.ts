import { writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { positiveFlag } from "../args.ts"
import type { BenchEnv } from "../system.ts"
import { KINDS, type Kind } from "./hostile.ts"
import { defaultOptions, describe, runFuzz } from "./run.ts"

const usage = `Usage: pnpm fuzz [options]
  --messages N   hostile entries to push onto the uplink intake (default ${defaultOptions.messages})
  --seed N       seed of the generated entries (default ${defaultOptions.seed})
  --peers N      good simulated peers working meanwhile (default ${defaultOptions.goodPeers})
  --signed N     good peers enrolled with an identity key, forged for (default ${defaultOptions.signedPeers})
  --only a,b     only these kinds (${KINDS.join(", ")})
  --json         print the report as JSON
  --report FILE  also write the report as JSON to FILE
Environment: BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres), BENCH_REDIS_URL
(default redis://127.0.0.1:6379). Exits 1 if a good peer's ticket did not end exactly once with its
own result, a signed peer's session did not stay the same open one, an oversized entry was not
dropped by the intake, or the server died or stopped reading.`

const { values } = parseArgs({
  options: {
    messages: { type: "string" },
    seed: { type: "string" },
    peers: { type: "string" },
    signed: { type: "string" },
    only: { type: "string" },
    json: { type: "boolean", default: false },
    report: { type: "string" },
    help: { type: "boolean", short: "h", default: false },
  },
})
if (values.help) {
  console.log(usage)
  process.exit(0)
}
const int = positiveFlag(usage, { integer: true })

const env: BenchEnv = {
  pgAdminUrl: process.env.BENCH_PG_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
  redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
}
const only = values.only?.split(",").map((k) => k.trim())
const unknown = only?.filter((k) => !(KINDS as ReadonlyArray<string>).includes(k)) ?? []
if (unknown.length > 0) {
  console.error(`unknown kind(s): ${unknown.join(", ")}\n\n${usage}`)
  process.exit(2)
}
const options = {
  ...defaultOptions,
  messages: int("messages", values.messages, defaultOptions.messages),
  seed: int("seed", values.seed, defaultOptions.seed),
  goodPeers: int("peers", values.peers, defaultOptions.goodPeers),
  signedPeers: int("signed", values.signed, defaultOptions.signedPeers),
  ...(only === undefined ? {} : { only: new Set(only as Array<Kind>) }),
  log: values.json ? () => {} : (line: string) => console.log(line),
}
if (!values.json)
  console.log(
    `fuzz: ${options.messages} hostile entries, ${options.goodPeers} good peers, ${options.signedPeers} signed`,
  )
const report = await runFuzz(env, options)
if (values.report !== undefined) writeFileSync(values.report, `${JSON.stringify(report, null, 2)}\n`)
if (values.json) console.log(JSON.stringify(report, null, 2))
else {
  console.log(describe(report))
  if (!report.serverAlive) console.log(`server log (tail):\n${report.serverLogTail}`)
}
process.exit(report.failures.length === 0 ? 0 : 1)
