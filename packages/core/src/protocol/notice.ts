/**
 * Notices between server instances, carried on an instance's own stream beside the peer messages
 * forwarded to it. Never sent by or to a peer; an instance reads them only from its own stream.
 */
import { Result, Schema } from "effect"
import { Id, JobSpec } from "./messages.ts"

/**
 * Tickets were submitted for a session this instance holds. They are in PostgreSQL already: the
 * holder reads the session's queued tickets from there and sends them (before it marks them
 * delivered), so a notice only wakes it and never says what to run. `tickets`, which instances of
 * an earlier version send, is ignored.
 */
export const TicketsWaiting = Schema.Struct({
  notice: Schema.Literal("tickets_waiting"),
  session_id: Id,
  tickets: Schema.optionalKey(Schema.Array(Schema.Struct({ ticket: Id, job: JobSpec }))),
})

/** Most tickets one `cancel_requested` notice names; more go in several notices. */
export const MAX_NOTICE_TICKETS = 1000

/**
 * An operator cancelled tickets of a session this instance holds. Like `tickets_waiting`, it only
 * wakes the holder: it reads those tickets' states and cancel requests from PostgreSQL, drops the
 * closed ones it had not sent yet, and asks the peer to stop the delivered ones that PostgreSQL
 * says are to be cancelled. A forged one costs a read.
 */
export const CancelRequested = Schema.Struct({
  notice: Schema.Literal("cancel_requested"),
  session_id: Id,
  tickets: Schema.Array(Id).check(Schema.isMaxLength(MAX_NOTICE_TICKETS)),
})

export const ServerNotice = Schema.Union([TicketsWaiting, CancelRequested])
export type ServerNotice = typeof ServerNotice.Type

const json = Schema.fromJsonString(ServerNotice)
const decode = Schema.decodeUnknownResult(json)
const encode = Schema.encodeSync(json)

export const encodeServerNotice = (notice: ServerNotice): string => encode(notice)

/** Undefined for anything that is not a notice (a forwarded peer message, say); never throws. */
export const decodeServerNotice = (raw: string): ServerNotice | undefined => {
  if (!raw.startsWith('{"notice"')) return undefined
  try {
    const decoded = decode(raw)
    return Result.isSuccess(decoded) ? decoded.success : undefined
  } catch {
    return undefined
  }
}
