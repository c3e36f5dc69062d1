import {
  type CancelOutcome,
  cancelReasonOf,
  Protocol,
  RunStore,
  type StoreError,
  TicketStore,
  Transport,
} from "@picus/core"
import { Clock, Effect, Option, Result, Schema } from "effect"
import { InvalidJob } from "./submit.ts"

const decodeId = Schema.decodeUnknownResult(Protocol.Id)
const decodeReason = Schema.decodeUnknownResult(Protocol.ReasonText)

/**
 * Tells the feed what a cancel did, and each session's holder which of its tickets to check (one
 * notice per session and at most MAX_NOTICE_TICKETS tickets).
 */
const passOn = Effect.fnUntraced(function* (
  outcomes: ReadonlyArray<CancelOutcome>,
  why: string,
  serverId: string,
) {
  const transport = yield* Transport
  const bySession = new Map<string, { readonly ownerId: string; readonly tickets: Array<string> }>()
  const at = yield* Clock.currentTimeMillis
  for (const o of outcomes) {
    if (o.outcome !== "cancelled" && o.outcome !== "requested") continue
    yield* transport.publish(() =>
      Protocol.encodeFeedEvent({
        event: "cancelled",
        at,
        server_id: serverId,
        peer_id: o.peerId,
        ticket: o.ticket,
        reason: why,
        ...(o.outcome === "requested" ? { requested: true } : {}),
      }),
    )
    if (o.owner === undefined) continue
    const entry = bySession.get(o.owner.sessionId) ?? { ownerId: o.owner.ownerId, tickets: [] }
    entry.tickets.push(o.ticket)
    bySession.set(o.owner.sessionId, entry)
  }
  for (const [sessionId, { ownerId, tickets }] of bySession) {
    for (let i = 0; i < tickets.length; i += Protocol.MAX_NOTICE_TICKETS) {
      yield* transport
        .forward(
          ownerId,
          Protocol.encodeServerNotice({
            notice: "cancel_requested",
            session_id: sessionId,
            tickets: tickets.slice(i, i + Protocol.MAX_NOTICE_TICKETS),
          }),
        )
        .pipe(Effect.ignore)
    }
  }
})

/** Checks who and why fit the wire (the reason a peer is told carries both). */
const checkReason = (by: string, reason: string) => {
  const why = cancelReasonOf(by, reason)
  return Result.isFailure(decodeReason(why))
    ? Effect.fail(
        new InvalidJob({
          field: "reason",
          message: `the reason with who cancels is over ${Protocol.MAX_REASON_LENGTH} characters`,
        }),
      )
    : Effect.succeed(why)
}

/**
 * Cancels a run: its pending and queued tickets end `cancelled` at once, its running ones are
 * killed on their peers (as `cancelTickets` does), and the run closes once none is open. None: no
 * such run.
 */
export const cancelRun = Effect.fnUntraced(function* (request: {
  readonly runId: string
  readonly by: string
  readonly reason: string
  readonly serverId: string
}): Effect.fn.Return<
  Option.Option<ReadonlyArray<CancelOutcome>>,
  InvalidJob | StoreError,
  TicketStore | RunStore | Transport
> {
  const why = yield* checkReason(request.by, request.reason)
  const outcomes = yield* (yield* TicketStore).cancelRun(request)
  if (Option.isNone(outcomes)) return outcomes
  yield* passOn(outcomes.value, why, request.serverId)
  // Closes the run when nothing of it is left open (the sweep would, a keep-alive later).
  yield* (yield* RunStore).advanceRuns([request.runId]).pipe(Effect.ignore)
  return outcomes
})

/**
 * Cancels tickets: those not running end `cancelled` at once (their holder is told, so it never
 * sends them); for delivered ones the request is written to PostgreSQL (that is the promise) and
 * the instance holding the session is told to ask its peer to stop the job. A notice may be lost:
 * cancelling again tells the holder again. Fails with InvalidJob for an id or reason the wire
 * cannot carry, before anything is written.
 */
export const cancelTickets = Effect.fnUntraced(function* (request: {
  readonly tickets: ReadonlyArray<string>
  /** Who cancels (an operator's name), recorded in the tickets' close reason. */
  readonly by: string
  readonly reason: string
  /** Written on the feed events (an instance id, or the tool's name). */
  readonly serverId: string
}): Effect.fn.Return<ReadonlyArray<CancelOutcome>, InvalidJob | StoreError, TicketStore | Transport> {
  for (const ticket of request.tickets) {
    if (Result.isFailure(decodeId(ticket)))
      return yield* new InvalidJob({ field: "ticket", message: `not a ticket id: ${JSON.stringify(ticket)}` })
  }
  const why = yield* checkReason(request.by, request.reason)
  const outcomes = yield* (yield* TicketStore).cancelTickets(request)
  yield* passOn(outcomes, why, request.serverId)
  return outcomes
})
