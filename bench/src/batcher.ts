import { wallNow } from "./clock.ts"

interface Waiting<T> {
  readonly row: T
  readonly resolve: (committedAt: number) => void
  readonly reject: (error: unknown) => void
}

/**
 * Collects rows from concurrent callers and writes them together: a batch is written when it holds
 * `maxRows` rows or `maxDelayMs` after its first row, whichever comes first. Each caller's promise
 * settles once its own batch is written (so with a transactional `write`, once its row is durable),
 * with the wall-clock time of that commit. Batches may be written concurrently.
 */
export class Batcher<T> {
  readonly #write: (rows: T[]) => Promise<void>
  readonly #maxRows: number
  readonly #maxDelayMs: number
  #batch: Waiting<T>[] = []
  #timer: NodeJS.Timeout | undefined
  readonly #inFlight = new Set<Promise<void>>()

  constructor(write: (rows: T[]) => Promise<void>, maxRows: number, maxDelayMs: number) {
    this.#write = write
    this.#maxRows = maxRows
    this.#maxDelayMs = maxDelayMs
  }

  add(row: T): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.#batch.push({ row, resolve, reject })
      if (this.#batch.length >= this.#maxRows) this.flush()
      else if (this.#timer === undefined) this.#timer = setTimeout(() => this.flush(), this.#maxDelayMs)
    })
  }

  /** Writes whatever is waiting now. */
  flush(): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
    const batch = this.#batch
    if (batch.length === 0) return
    this.#batch = []
    const done = this.#write(batch.map((w) => w.row)).then(
      () => {
        const at = wallNow()
        for (const w of batch) w.resolve(at)
      },
      (error: unknown) => {
        for (const w of batch) w.reject(error)
      },
    )
    this.#inFlight.add(done)
    void done.finally(() => this.#inFlight.delete(done))
  }

  /** Writes what is waiting and waits for every batch in flight. */
  async drain(): Promise<void> {
    this.flush()
    await Promise.all([...this.#inFlight])
  }
}
