/** Small descriptive statistics for benchmark samples. Inputs are never mutated. */

const sorted = (values: ArrayLike<number>): Float64Array => Float64Array.from(values).sort()

/**
 * The q-quantile (0 <= q <= 1) of already sorted values, interpolating linearly between the two
 * nearest ranks (the "type 7" definition used by R and NumPy by default). NaN for no values.
 */
export const quantileSorted = (values: ArrayLike<number>, q: number): number => {
  const n = values.length
  if (n === 0) return Number.NaN
  if (q <= 0) return values[0]!
  if (q >= 1) return values[n - 1]!
  const rank = (n - 1) * q
  const lo = Math.floor(rank)
  const hi = Math.min(lo + 1, n - 1)
  const a = values[lo]!
  const b = values[hi]!
  return a + (b - a) * (rank - lo)
}

/** The p-th percentile (0..100) of unsorted values. */
export const percentile = (values: ArrayLike<number>, p: number): number =>
  quantileSorted(sorted(values), p / 100)

/** Several percentiles (0..100) at once, sorting only once. */
export const percentiles = (values: ArrayLike<number>, ps: ReadonlyArray<number>): number[] => {
  const s = sorted(values)
  return ps.map((p) => quantileSorted(s, p / 100))
}

export const median = (values: ArrayLike<number>): number => percentile(values, 50)

export interface Spread {
  readonly n: number
  readonly median: number
  readonly min: number
  readonly max: number
  /** First and third quartiles. */
  readonly q1: number
  readonly q3: number
  /** (max - min) / median: how far apart the repeats are, relative to their median. */
  readonly relRange: number
}

/** Median, range and quartiles of a few repeated measurements. */
export const spread = (values: ArrayLike<number>): Spread => {
  const s = sorted(values)
  const med = quantileSorted(s, 0.5)
  const min = s.length > 0 ? s[0]! : Number.NaN
  const max = s.length > 0 ? s[s.length - 1]! : Number.NaN
  return {
    n: s.length,
    median: med,
    min,
    max,
    q1: quantileSorted(s, 0.25),
    q3: quantileSorted(s, 0.75),
    relRange: med === 0 ? Number.NaN : (max - min) / med,
  }
}
