/**
 * Turns raw Redis payloads into typed messages and back.
 *
 * Decoding never throws: every failure is a `ProtocolError` in a `Result`. The checks run in a fixed
 * order (size, then UTF-8/JSON, then object, then `msg` against the kinds of that direction, then the
 * fields), so the cheapest check rejects garbage first and a huge payload is never parsed.
 */
import { Predicate, Result, Schema, type SchemaAST, SchemaIssue } from "effect"
import { ProtocolError, type ProtocolErrorReason } from "./errors.ts"
import { MAX_MESSAGE_BYTES, utf8ByteLength } from "./limits.ts"
import * as Messages from "./messages.ts"

type Decoder<A> = (input: unknown) => Result.Result<A, Schema.SchemaError>

const parseOptions = { errors: "all" } as const

const decoder = <S extends Schema.Decoder<unknown>>(schema: S): Decoder<S["Type"]> =>
  Schema.decodeUnknownResult(schema, parseOptions)
const encoder = <S extends Schema.Encoder<unknown>>(schema: S): Decoder<S["Encoded"]> =>
  Schema.encodeUnknownResult(schema, parseOptions)

const peerDecoders: Record<Messages.PeerMessage["msg"], Decoder<Messages.PeerMessage>> = {
  register: decoder(Messages.Register),
  result: decoder(Messages.Result),
  heartbeat: decoder(Messages.Heartbeat),
  logout: decoder(Messages.Logout),
  output: decoder(Messages.Output),
}

const decodeJob = decoder(Messages.Job)
const decodeAccepted = decoder(Messages.RegisterAccepted)
const decodeRejected = decoder(Messages.RegisterRejected)
/** The fields both register replies share, with `status` either literal: only used to report bad replies. */
const decodeReplyShape = decoder(
  Schema.Struct({
    msg: Schema.Literal("register"),
    peer_id: Messages.Id,
    token: Messages.Token,
    status: Schema.Literals(["accepted", "rejected"]),
  }),
)
/** A register reply whose `status` is missing or neither literal: names the bad `status` (and common fields). */
const decodeRegisterReply: Decoder<Messages.ServerMessage> = (input) =>
  Result.flatMap(
    decodeReplyShape(input),
    (reply): Result.Result<Messages.ServerMessage, Schema.SchemaError> =>
      reply.status === "accepted" ? decodeAccepted(input) : decodeRejected(input),
  )
const decodeShutdown = decoder(Messages.Shutdown)
const decodeHeartbeat = decoder(Messages.Heartbeat)
const decodeCancel = decoder(Messages.Cancel)

/**
 * A server `"register"` is a job when it carries a `job` field (the seed's alias), otherwise an accepted
 * or rejected reply depending on `status`. Picking the member first gives precise error paths, where
 * decoding the whole union would report the failures of every member.
 */
const selectServerDecoder = (
  msg: string,
  message: { readonly [key: string]: unknown },
): Decoder<Messages.ServerMessage> | undefined => {
  switch (msg) {
    case "job":
      return decodeJob
    case "shutdown":
      return decodeShutdown
    case "heartbeat":
      return decodeHeartbeat
    case "cancel":
      return decodeCancel
    case "register":
      if (Object.hasOwn(message, "job")) return decodeJob
      if (message.status === "accepted") return decodeAccepted
      if (message.status === "rejected") return decodeRejected
      return decodeRegisterReply
    default:
      return undefined
  }
}

const selectPeerDecoder = (msg: string): Decoder<Messages.PeerMessage> | undefined =>
  Object.hasOwn(peerDecoders, msg) ? peerDecoders[msg as Messages.PeerMessage["msg"]] : undefined

// ---------------------------------------------------------------------------------------------------
// Error messages (never quoting field values, so a token cannot leak into a log)
// ---------------------------------------------------------------------------------------------------

const fail = (reason: ProtocolErrorReason, message: string) =>
  Result.fail(new ProtocolError({ reason, message }))

const MAX_ISSUES_SHOWN = 5
const MAX_MSG_SHOWN = 64

const describeAst = (ast: SchemaAST.AST): string => {
  switch (ast._tag) {
    case "String":
      return "a string"
    case "Number":
      return "a number"
    case "Boolean":
      return "a boolean"
    case "Null":
      return "null"
    case "Objects":
      return "an object"
    case "Literal":
      return JSON.stringify(ast.literal) ?? String(ast.literal)
    case "Union":
      return ast.types.map(describeAst).join(" or ")
    default:
      return "a valid value"
  }
}

const leafHook: SchemaIssue.LeafHook = (issue) => {
  switch (issue._tag) {
    case "MissingKey":
      return "missing"
    case "InvalidType":
      return `expected ${describeAst(issue.ast)}`
    default:
      return SchemaIssue.defaultLeafHook(issue)
  }
}

const formatIssues = SchemaIssue.makeFormatterStandardSchemaV1({ leafHook })

const lowerFirst = (text: string) => text.charAt(0).toLowerCase() + text.slice(1)

/** One line per failing field: its path (schema keys, after `prefix` if any) and what was expected. */
export const describeSchemaIssues = (
  error: Schema.SchemaError,
  prefix?: string,
): ReadonlyArray<{ readonly field: string; readonly message: string }> => {
  const seen = new Set<string>()
  return formatIssues(error.issue).issues.flatMap(({ path, message }) => {
    const keys = (path ?? []).map((segment) =>
      String(Predicate.isObject(segment) && "key" in segment ? segment.key : segment),
    )
    const field = (prefix === undefined ? keys : [prefix, ...keys]).join(".")
    const line = { field, message: `${field}: ${lowerFirst(message)}` }
    if (seen.has(line.message)) return []
    seen.add(line.message)
    return [line]
  })
}

/** `result.ticket: expected a string; result.exit_code: expected an integer`. Paths are schema keys. */
const describeSchemaError = (msg: string, error: Schema.SchemaError): string => {
  const all = new Set(describeSchemaIssues(error, msg).map((issue) => issue.message))
  const lines = Array.from(all).slice(0, MAX_ISSUES_SHOWN)
  const more = all.size - lines.length
  return more > 0 ? `${lines.join("; ")}; and ${more} more` : lines.join("; ")
}

/** The unknown `msg` value, quoted and truncated; withheld if it contains the message's token. */
const describeMsgValue = (value: string, token: unknown): string => {
  if (Predicate.isString(token) && token.length > 0 && value.includes(token))
    return "(withheld: contains the token)"
  const codePoints = Array.from(value.slice(0, MAX_MSG_SHOWN * 2))
  return codePoints.length > MAX_MSG_SHOWN
    ? `${JSON.stringify(codePoints.slice(0, MAX_MSG_SHOWN).join(""))}…`
    : JSON.stringify(value)
}

const describeJsonType = (value: unknown): string =>
  value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`

// ---------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------

const utf8Decoder = new TextDecoder("utf-8", { fatal: true })

type JsonObject = { readonly [key: string]: unknown }

/** Size, UTF-8, JSON and object checks, shared by both directions. */
const parseObject = (raw: string | Uint8Array): Result.Result<JsonObject, ProtocolError> => {
  let text: string
  if (Predicate.isString(raw)) {
    // A string has at least as many UTF-8 bytes as UTF-16 units: skip counting when it is obviously too large.
    if (raw.length > MAX_MESSAGE_BYTES) {
      return fail("too_large", `message is over ${MAX_MESSAGE_BYTES} bytes (limit ${MAX_MESSAGE_BYTES})`)
    }
    const bytes = raw.length * 3 <= MAX_MESSAGE_BYTES ? raw.length : utf8ByteLength(raw)
    if (bytes > MAX_MESSAGE_BYTES) {
      return fail("too_large", `message is ${bytes} bytes (limit ${MAX_MESSAGE_BYTES})`)
    }
    text = raw
  } else {
    if (raw.byteLength > MAX_MESSAGE_BYTES) {
      return fail("too_large", `message is ${raw.byteLength} bytes (limit ${MAX_MESSAGE_BYTES})`)
    }
    try {
      text = utf8Decoder.decode(raw)
    } catch {
      return fail("not_json", "message is not valid UTF-8")
    }
  }
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    // The parser's own message quotes the input, which may contain the token: say nothing more.
    return fail("not_json", "message is not valid JSON")
  }
  if (!Predicate.isObject(value) || Array.isArray(value)) {
    return fail("not_an_object", `message is ${describeJsonType(value)}, expected a JSON object`)
  }
  return Result.succeed(value as JsonObject)
}

const decodeWith = <A>(
  raw: string | Uint8Array,
  direction: string,
  kinds: ReadonlyArray<string>,
  select: (msg: string, message: JsonObject) => Decoder<A> | undefined,
): Result.Result<A, ProtocolError> => {
  const parsed = parseObject(raw)
  if (Result.isFailure(parsed)) return Result.fail(parsed.failure)
  const message = parsed.success
  const msg = message.msg
  const expected = `expected one of ${kinds.join(", ")}`
  if (!Predicate.isString(msg)) {
    return fail(
      "unknown_msg",
      msg === undefined
        ? `${direction} message has no "msg" field (${expected})`
        : `${direction} message has a "msg" that is ${describeJsonType(msg)}, not a string (${expected})`,
    )
  }
  const decode = select(msg, message)
  if (decode === undefined) {
    return fail(
      "unknown_msg",
      `unknown ${direction} msg ${describeMsgValue(msg, message.token)} (${expected})`,
    )
  }
  let decoded: Result.Result<A, Schema.SchemaError>
  try {
    decoded = decode(message)
  } catch {
    // Defensive: schema decoding reports issues as values, but nothing may escape the decoder.
    return fail("invalid_shape", `${msg}: could not be decoded`)
  }
  return Result.isSuccess(decoded)
    ? Result.succeed(decoded.success)
    : fail("invalid_shape", describeSchemaError(msg, decoded.failure))
}

/** Decodes a message sent by a peer to the server (`register`, `result`, `heartbeat`, `logout`). */
export const decodePeerMessage = (
  raw: string | Uint8Array,
): Result.Result<Messages.PeerMessage, ProtocolError> =>
  decodeWith(raw, "peer->server", Messages.PEER_MSG_KINDS, selectPeerDecoder)

/**
 * Decodes a message sent by the server to a peer (`register` accepted/rejected, `job`, the seed's
 * `register` job alias, `shutdown`).
 */
export const decodeServerMessage = (
  raw: string | Uint8Array,
): Result.Result<Messages.ServerMessage, ProtocolError> =>
  decodeWith(raw, "server->peer", Messages.SERVER_MSG_KINDS, selectServerDecoder)

// ---------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------

const encoders = {
  register: encoder(Messages.Register),
  register_accepted: encoder(Messages.RegisterAccepted),
  register_rejected: encoder(Messages.RegisterRejected),
  result: encoder(Messages.Result),
  heartbeat: encoder(Messages.Heartbeat),
  logout: encoder(Messages.Logout),
  job: encoder(Messages.Job),
  shutdown: encoder(Messages.Shutdown),
  output: encoder(Messages.Output),
  cancel: encoder(Messages.Cancel),
}

const selectEncoder = (message: Messages.Message): Decoder<unknown> | undefined => {
  switch (message.msg) {
    case "register":
      if (!("status" in message)) return encoders.register
      return message.status === "accepted" ? encoders.register_accepted : encoders.register_rejected
    case "result":
    case "heartbeat":
    case "logout":
    case "job":
    case "shutdown":
    case "output":
    case "cancel":
      return encoders[message.msg]
    default:
      return undefined
  }
}

/**
 * Encodes a message as JSON text, validating it against its schema (limits included) and against
 * `MAX_MESSAGE_BYTES`, so a sender finds out instead of the receiver dropping the message. Only the
 * schema's fields are emitted; jobs go out in the seed's form, `"msg": "register"` with a `job`.
 */
export const encodeMessageResult = (message: Messages.Message): Result.Result<string, ProtocolError> => {
  const msg = message.msg
  const encode = selectEncoder(message)
  if (encode === undefined) {
    // Only reachable when a caller bypassed the types.
    const shown = Predicate.isString(msg) ? describeMsgValue(msg, message.token) : describeJsonType(msg)
    return fail("unknown_msg", `cannot encode a message with msg ${shown}`)
  }
  let encoded: Result.Result<unknown, Schema.SchemaError>
  try {
    encoded = encode(message)
  } catch {
    return fail("invalid_shape", `${msg}: could not be encoded`)
  }
  if (Result.isFailure(encoded)) return fail("invalid_shape", describeSchemaError(msg, encoded.failure))
  const json = JSON.stringify(encoded.success)
  const bytes = utf8ByteLength(json)
  if (bytes > MAX_MESSAGE_BYTES) {
    return fail("too_large", `encoded ${msg} message is ${bytes} bytes (limit ${MAX_MESSAGE_BYTES})`)
  }
  return Result.succeed(json)
}

/** Like {@link encodeMessageResult}, but throws the `ProtocolError` (a bug in the sender). */
export const encodeMessage = (message: Messages.Message): string => {
  const encoded = encodeMessageResult(message)
  if (Result.isFailure(encoded)) throw encoded.failure
  return encoded.success
}
