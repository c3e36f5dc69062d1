// Prints the plain summary line "N passed, N failed" from vitest's JSON report.
import { readFileSync } from "node:fs"

const path = process.argv[2] ?? ".vitest-report.json"
try {
  const report = JSON.parse(readFileSync(path, "utf8")) as {
    numPassedTests: number
    numFailedTests: number
    numPendingTests: number
    numTodoTests: number
  }
  const skipped = report.numPendingTests + report.numTodoTests
  console.log(
    `${report.numPassedTests} passed, ${report.numFailedTests} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`,
  )
} catch (error) {
  console.log(
    `0 passed, 1 failed (no test report: ${error instanceof Error ? error.message : String(error)})`,
  )
}
