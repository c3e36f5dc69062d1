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
export const ServerNotice = Schema.Struct({
  notice: Schema.Literal("tickets_waiting"),
  session_id: Id,
  tickets: Schema.optionalKey(Schema.Array(Schema.Struct({ ticket: Id, job: JobSpec }))),
})
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
