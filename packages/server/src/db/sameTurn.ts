import { classifyError } from "./pool.ts"

/**
 * Calls made in the same turn of the event loop, sent to PostgreSQL together: a storm of ten
 * thousand registrations is a few hundred statements, not tens of thousands, each a round trip.
 *
 * - `keyOf`: calls of one key never share a batch (the later ones wait for the next), so a batch's
 *   statement never meets the same row twice (PostgreSQL refuses `on conflict do update` on a row it
 *   already touched) and calls of one key keep their order.
 * - `groupOf`: only calls of one group share a batch (the first call's; the others go next).
 * - `maxBatch` (default 500): calls beyond it go next, so no statement grows without bound.
 * - `send` answers each call of the batch, in order; `undefined` sends that call alone.
 * - `alone` handles one call by itself (default: `send` with a batch of that call alone): a batch
 *   that failed is sent again call by call, so one bad call fails alone instead of taking the others
 *   with it; unless the database was lost, when whether the batch was written is unknown, and every
 *   call fails as one would have alone.
 */
export const sameTurn = <I, O>(options: {
  readonly keyOf: (input: I) => string
  readonly groupOf?: (input: I) => string
  readonly maxBatch?: number
  readonly send: (batch: ReadonlyArray<I>) => Promise<ReadonlyArray<O | undefined>>
  readonly alone?: (input: I) => Promise<O>
}): ((input: I) => Promise<O>) => {
  interface Call {
    readonly input: I
    readonly resolve: (output: O) => void
    readonly reject: (error: unknown) => void
  }
  let waiting: Array<Call> = []
  const maxBatch = options.maxBatch ?? 500
  const alone =
    options.alone ??
    (async (input: I) => {
      const [output] = await options.send([input])
      if (output === undefined) throw new Error("a batch of one call left it unanswered")
      return output
    })

  const settle = (call: Call, output: Promise<O>) => output.then(call.resolve, call.reject)

  const flush = async () => {
    if (waiting.length === 0) return
    const group = options.groupOf?.(waiting[0]!.input)
    const keys = new Set<string>()
    const batch: Array<Call> = []
    const later: Array<Call> = []
    for (const call of waiting) {
      const key = options.keyOf(call.input)
      if (
        batch.length >= maxBatch ||
        keys.has(key) ||
        (group !== undefined && options.groupOf?.(call.input) !== group)
      )
        later.push(call)
      else {
        keys.add(key)
        batch.push(call)
      }
    }
    waiting = later
    if (later.length > 0) setImmediate(flush)
    if (batch.length === 1) return settle(batch[0]!, alone(batch[0]!.input))
    let outputs: ReadonlyArray<O | undefined>
    try {
      outputs = await options.send(batch.map((c) => c.input))
    } catch (error) {
      const lost = classifyError(error) === "unavailable"
      for (const call of batch)
        if (lost) call.reject(error)
        else void settle(call, alone(call.input))
      return
    }
    batch.forEach((call, i) => {
      const output = outputs[i]
      if (output === undefined) void settle(call, alone(call.input))
      else call.resolve(output)
    })
  }

  return (input) =>
    new Promise<O>((resolve, reject) => {
      waiting.push({ input, resolve, reject })
      if (waiting.length === 1) setImmediate(flush)
    })
}
