import { Effect } from "effect"

/** Creates one ticket for the peer's open session (and nudges the server that owns it). */
export type Submit = (peerId: string) => Effect.Effect<void, unknown>

export interface RateOptions {
  /** Tickets per second. */
  readonly rate: number
  readonly submit: Submit
  /** The peer for the next ticket; undefined when no peer is logged in (that ticket is skipped). */
  readonly nextPeer: () => string | undefined
  /** Told of every ticket: handed over (true) or not (false). */
  readonly count: (ok: boolean) => void
  /** Submissions in flight at most. */
  readonly concurrency?: number
  readonly tickMs?: number
}

/**
 * Submits `rate` tickets per second until interrupted. The schedule is kept against the clock:
 * a tick that falls behind (slow submissions) is caught up by the next, so the achieved rate shows
 * what the system sustains.
 */
export const submitAtRate = (options: RateOptions): Effect.Effect<never> =>
  Effect.gen(function* () {
    const tickMs = options.tickMs ?? 100
    const started = Date.now()
    let issued = 0
    while (true) {
      const due = Math.floor(((Date.now() - started) / 1_000) * options.rate)
      const peers: Array<string> = []
      while (issued < due) {
        issued++
        const peer = options.nextPeer()
        if (peer !== undefined) peers.push(peer)
      }
      yield* Effect.forEach(
        peers,
        (peer) =>
          options.submit(peer).pipe(
            Effect.matchCause({
              onSuccess: () => options.count(true),
              onFailure: () => options.count(false),
            }),
          ),
        { concurrency: options.concurrency ?? 64, discard: true },
      )
      yield* Effect.sleep(tickMs)
    }
  })
