/**
 * A positive number from a command-line flag, or `fallback` when the flag is absent; a bad value
 * prints what is wrong and the usage, and exits 2.
 */
export const positiveFlag =
  (usage: string, options: { readonly integer?: boolean } = {}) =>
  (name: string, raw: string | undefined, fallback: number): number => {
    if (raw === undefined) return fallback
    const n = Number(raw)
    const fits = options.integer ? Number.isInteger(n) : Number.isFinite(n)
    if (!fits || n <= 0) {
      const what = options.integer ? "a positive whole number" : "a positive number"
      console.error(`--${name} must be ${what}, got ${raw}\n\n${usage}`)
      process.exit(2)
    }
    return n
  }
