/** Prints rows as an aligned table for people, or as JSON for scripts. */
export const printRows = (rows: ReadonlyArray<Record<string, unknown>>, json: boolean): void => {
  if (json) {
    console.log(JSON.stringify(rows, null, 2))
    return
  }
  if (rows.length === 0) {
    console.log("(none)")
    return
  }
  const columns = Object.keys(rows[0]!)
  const cell = (value: unknown) => (value === null || value === undefined ? "-" : String(value))
  const widths = columns.map((c) => Math.max(c.length, ...rows.map((r) => cell(r[c]).length)))
  const line = (values: ReadonlyArray<string>) =>
    values
      .map((v, i) => v.padEnd(widths[i]!))
      .join("  ")
      .trimEnd()
  console.log(line(columns))
  for (const row of rows) console.log(line(columns.map((c) => cell(row[c]))))
}
