/** "Did you mean": the closest of known words to a mistyped one. */

/** Levenshtein distance, for "did you mean". */
const distance = (a: string, b: string): number => {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    let diagonal = row[0]!
    row[0] = i
    for (let j = 1; j <= b.length; j++) {
      const above = row[j]!
      row[j] = Math.min(above + 1, row[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1))
      diagonal = above
    }
  }
  return row[b.length]!
}

/** The closest of `candidates` to a mistyped `word`, when one is close enough to be meant. */
export const suggest = (word: string, candidates: ReadonlyArray<string>): string | undefined => {
  let best: { readonly name: string; readonly d: number } | undefined
  for (const name of candidates) {
    const d = name.startsWith(word) && word.length >= 2 ? 1 : distance(word, name)
    if (d <= Math.max(1, Math.floor(name.length / 3)) && (best === undefined || d < best.d))
      best = { name, d }
  }
  return best?.name
}
