/**
 * The live event feed: what servers publish on the `{p}:events` pub/sub channel for people watching
 * (the live view of `make dev`, `./picus watch`). At-most-once by nature: nothing depends on
 * these, and PostgreSQL holds the record of everything they say. Never carries a token.
 */
import { Result, Schema } from "effect"
import { MAX_OUTPUT_CHUNK_BYTES } from "./limits.ts"
import { EpochMillis, Id, Label, OutputStream, ReasonText, Text } from "./messages.ts"

const Common = { at: EpochMillis, server_id: Id }

export const FeedEvent = Schema.Union([
  Schema.Struct({
    event: Schema.Literal("registered"),
    ...Common,
    peer_id: Id,
    session_id: Id,
    os: Schema.NullOr(Label),
    distro: Schema.NullOr(Label),
    tickets: Schema.Int,
  }),
  Schema.Struct({ event: Schema.Literal("rejected"), ...Common, peer_id: Id, reason: ReasonText }),
  Schema.Struct({
    event: Schema.Literal("taken_over"),
    ...Common,
    peer_id: Id,
    session_id: Id,
    from_server_id: Id,
  }),
  Schema.Struct({ event: Schema.Literal("job_sent"), ...Common, peer_id: Id, ticket: Id, name: Label }),
  Schema.Struct({
    event: Schema.Literal("result"),
    ...Common,
    peer_id: Id,
    ticket: Id,
    name: Label,
    status: Schema.String,
    exit_code: Schema.NullOr(Schema.Int),
    /** The first line of the output, cut to 200 characters. */
    first_line: Schema.String,
  }),
  Schema.Struct({ event: Schema.Literal("logged_out"), ...Common, peer_id: Id, reason: ReasonText }),
  /**
   * A chunk of a running job's output, relayed as its peer sent it (never stored). `dropped`: bytes
   * left out before it, by the peer (its rate and cap) or by the server (the session's bound).
   */
  Schema.Struct({
    event: Schema.Literal("output"),
    ...Common,
    peer_id: Id,
    ticket: Id,
    seq: Schema.Int,
    stream: OutputStream,
    data: Text.check(Schema.isMaxLength(MAX_OUTPUT_CHUNK_BYTES)),
    dropped: Schema.optionalKey(Schema.Int),
  }),
  /**
   * A ticket ended `cancelled` (at once when it was not running; or its peer reported the job
   * killed), or its running job was asked to stop (`requested`). `reason` names who and why.
   */
  Schema.Struct({
    event: Schema.Literal("cancelled"),
    ...Common,
    peer_id: Id,
    ticket: Id,
    reason: ReasonText,
    requested: Schema.optionalKey(Schema.Boolean),
  }),
  Schema.Struct({ event: Schema.Literal("shutdown"), ...Common, reason: ReasonText }),
])
export type FeedEvent = typeof FeedEvent.Type

const json = Schema.fromJsonString(FeedEvent)
const decode = Schema.decodeUnknownResult(json)
const encode = Schema.encodeSync(json)

export const encodeFeedEvent = (event: FeedEvent): string => encode(event)

/** Undefined for anything that is not a feed event of this version; never throws. */
export const decodeFeedEvent = (raw: string): FeedEvent | undefined => {
  try {
    const decoded = decode(raw)
    return Result.isSuccess(decoded) ? decoded.success : undefined
  } catch {
    return undefined
  }
}

/** The first line of a text, cut for display. */
export const firstLine = (text: string, max = 200): string => {
  const line = text.split("\n", 1)[0] ?? ""
  return line.length > max ? `${line.slice(0, max - 1)}…` : line
}
