// `pnpm chaos`: every fault scenario at full scale, one after another, then the ledger table.
// Usage: pnpm chaos [--peers N] [--jobs N] [scenario name ...]
import { formatLedgers, type Ledger, runScenario, scenarios } from "./scenarios.ts"

const args = process.argv.slice(2)
const option = (name: string, fallback: number) => {
  const i = args.indexOf(name)
  if (i === -1) return fallback
  const value = Number(args.splice(i, 2)[1])
  if (!Number.isInteger(value) || value <= 0) throw new Error(`${name} takes a positive whole number`)
  return value
}
const scale = { peers: option("--peers", 20), jobsPerPeer: option("--jobs", 100) }
const names = args.length > 0 ? args : Object.keys(scenarios)

const ledgers: Array<Ledger> = []
for (const name of names) {
  console.log(`running: ${name} (${scale.peers} peers x ${scale.jobsPerPeer} jobs)`)
  const started = Date.now()
  ledgers.push(await runScenario(name, scale))
  console.log(`  done in ${((Date.now() - started) / 1000).toFixed(0)} s`)
}
console.log(`\n${formatLedgers(ledgers)}`)
const bad = ledgers.filter((l) => l.lost > 0 || l.duplicated > 0 || l.openSessions > 0)
if (bad.length > 0) {
  console.log(`\nledger check FAILED: ${bad.map((l) => l.scenario).join(", ")}`)
  process.exit(1)
}
console.log(
  "\nledger check passed: every ticket in one terminal state, no result twice, every session closed",
)
