import { Schema } from "effect"

/**
 * Why a message was refused, in the order the codec checks:
 * - `too_large`: the raw message exceeds `MAX_MESSAGE_BYTES` (checked before parsing);
 * - `not_json`: the bytes are not UTF-8 or the text is not JSON;
 * - `not_an_object`: valid JSON, but not a JSON object (array, number, string, boolean, null);
 * - `unknown_msg`: the `msg` field is missing, not a string, or not a kind this direction accepts;
 * - `invalid_shape`: a known kind whose fields are missing, of the wrong type or over a limit.
 */
export const ProtocolErrorReason = Schema.Literals([
  "too_large",
  "not_json",
  "not_an_object",
  "unknown_msg",
  "invalid_shape",
])
export type ProtocolErrorReason = typeof ProtocolErrorReason.Type

/**
 * A message that could not be decoded (or a value that cannot be encoded). `message` names the problem
 * for logs (for `invalid_shape`, e.g. `result.ticket: expected a string`) and never contains the value
 * of the `token` field.
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>()("ProtocolError", {
  reason: ProtocolErrorReason,
  message: Schema.String,
}) {}
