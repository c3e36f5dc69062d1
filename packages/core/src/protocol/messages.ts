/**
 * The wire messages exchanged between the server and its peers, as Effect Schemas. This is the only
 * place in the project that defines them; `docs/protocol.md` describes the same contract in prose.
 *
 * Field names are snake_case exactly as on the wire. Unknown extra fields are ignored when decoding
 * (a newer peer may send more) and are never emitted when encoding. Decoded values keep their `msg`
 * field, so code switches on `msg` (and, for the server's register replies, on `status`); there is no
 * `_tag`.
 */
import { Order, Schema, SchemaGetter } from "effect"
import {
  LABEL_KEY_PATTERN,
  MAX_COMMAND_BYTES,
  MAX_EPOCH_MILLIS,
  MAX_EXIT_CODE,
  MAX_ID_LENGTH,
  MAX_LABEL_LENGTH,
  MAX_LABELS,
  MAX_OUTPUT_CHUNK_BYTES,
  MAX_OUTPUT_SEQ,
  MAX_REASON_LENGTH,
  MAX_RESULT_BYTES,
  MAX_TIMEOUT_MS,
  MAX_TOKEN_LENGTH,
  MIN_EXIT_CODE,
  NUL,
  utf8ByteLength,
} from "./limits.ts"

// ---------------------------------------------------------------------------------------------------
// Field schemas
// ---------------------------------------------------------------------------------------------------

/** Counts like `Array.from(text).length`: a surrogate pair is one code point, a lone surrogate too. */
const codePointLength = (text: string): number => {
  let count = text.length
  for (let i = 0; i < text.length - 1; i++) {
    const unit = text.charCodeAt(i)
    if (unit >= 0xd800 && unit <= 0xdbff) {
      const next = text.charCodeAt(i + 1)
      if (next >= 0xdc00 && next <= 0xdfff) {
        count--
        i++
      }
    }
  }
  return count
}

// The failures say the limit and the size found, never the value (it may be a secret).
const isMaxUtf8Bytes = (max: number) =>
  Schema.makeFilter<string>(
    (text) => {
      // A string never has fewer UTF-8 bytes than UTF-16 units, nor more than three per unit.
      if (text.length * 3 <= max) return true
      const bytes = utf8ByteLength(text)
      return bytes <= max || `expected at most ${max} UTF-8 bytes, got ${bytes}`
    },
    {
      expected: `at most ${max} UTF-8 bytes`,
      // Guides Schema-derived arbitraries; a string never has more UTF-16 units than UTF-8 bytes.
      arbitraryConstraint: { maxLength: max },
    },
  )

const isMaxCodePoints = (max: number) =>
  Schema.makeFilter<string>(
    (text) => {
      if (text.length <= max) return true
      const count = codePointLength(text)
      return count <= max || `expected at most ${max} code points, got ${count}`
    },
    { expected: `at most ${max} code points`, arbitraryConstraint: { maxCodePoints: max } },
  )

const isNonEmpty = Schema.isNonEmpty({ expected: "a non-empty string" })

/** PostgreSQL `text` cannot hold U+0000, so no wire string may carry one. */
const hasNoNul = Schema.makeFilter<string>(
  (text) => {
    const at = text.indexOf(NUL)
    return at < 0 || `expected no U+0000 (NUL) character, got one at index ${at}`
  },
  { expected: "no U+0000 (NUL) character" },
)

/** Any string of the wire: free of U+0000. */
export const Text = Schema.String.check(hasNoNul)

/** `peer_id`, `ticket`, `session_id`, `server_id`: non-empty, at most `MAX_ID_LENGTH` code points. */
export const Id = Text.check(isNonEmpty, isMaxCodePoints(MAX_ID_LENGTH))

/** `token`: non-empty, at most `MAX_TOKEN_LENGTH` code points. */
export const Token = Text.check(isNonEmpty, isMaxCodePoints(MAX_TOKEN_LENGTH))

/** `server_ip`, `os`, `distro`, `hostname`, `agent_version`, job `name`: at most `MAX_LABEL_LENGTH` code points. */
export const Label = Text.check(isMaxCodePoints(MAX_LABEL_LENGTH))

/**
 * A peer's labels (`role: "web"`): at most `MAX_LABELS`, each key `LABEL_KEY_PATTERN` (lower-case
 * letters, digits, `_.-/`, 1 to 63), each value a `Label`. The keys are checked with the count: a
 * record's key schema does not refine the keys it decodes.
 */
export const Labels = Schema.Record(Schema.String, Label).check(
  Schema.makeFilter<Readonly<Record<string, string>>>(
    (labels) => {
      const keys = Object.keys(labels)
      if (keys.length > MAX_LABELS) return `expected at most ${MAX_LABELS} labels, got ${keys.length}`
      const bad = keys.find((key) => !LABEL_KEY_PATTERN.test(key))
      return (
        bad === undefined ||
        `expected label keys of 1 to 63 lower-case letters, digits, "_", ".", "-" or "/", got ${JSON.stringify(bad.slice(0, 80))}`
      )
    },
    { expected: `at most ${MAX_LABELS} labels with keys of [a-z0-9_./-]{1,63}` },
  ),
)
export type Labels = typeof Labels.Type

/** `reason`: at most `MAX_REASON_LENGTH` code points. */
export const ReasonText = Text.check(isMaxCodePoints(MAX_REASON_LENGTH))

/** A job's `command`: non-empty, at most `MAX_COMMAND_BYTES` UTF-8 bytes. */
export const Command = Text.check(isNonEmpty, isMaxUtf8Bytes(MAX_COMMAND_BYTES))

/** A result's `result` text: at most `MAX_RESULT_BYTES` UTF-8 bytes. */
export const ResultText = Text.check(isMaxUtf8Bytes(MAX_RESULT_BYTES))

const intBetween = (minimum: number, maximum: number) =>
  Schema.Number.check(
    Schema.makeFilter<number>(
      (n) =>
        (Number.isSafeInteger(n) && n >= minimum && n <= maximum) ||
        `expected an integer from ${minimum} to ${maximum}, got ${n}`,
      {
        expected: `an integer from ${minimum} to ${maximum}`,
        arbitraryConstraint: { number: "integer", order: Order.Number, minimum, maximum },
      },
    ),
  )

/** Milliseconds since the Unix epoch, up to `MAX_EPOCH_MILLIS`. */
export const EpochMillis = intBetween(0, MAX_EPOCH_MILLIS)

/** A process exit code, as an `integer` column holds it (32-bit signed). */
export const ExitCode = intBetween(MIN_EXIT_CODE, MAX_EXIT_CODE)

/** A job's `timeout_ms`: positive, and an `integer` column holds it. */
export const TimeoutMs = intBetween(1, MAX_TIMEOUT_MS)

/** A base64url Ed25519 or X25519 public key: 32 raw bytes, 43 characters. */
export const PublicKey = Schema.String.check(
  Schema.makeFilter<string>(
    (text) => /^[A-Za-z0-9_-]{43}$/.test(text) || "expected a base64url public key of 43 characters",
    { expected: "a base64url public key of 43 characters" },
  ),
)

/** A sealed secret (see trust/seal.ts): base64url, at most 2048 characters. */
export const Sealed = Schema.String.check(
  Schema.makeFilter<string>(
    (text) =>
      /^[A-Za-z0-9_-]{80,2048}$/.test(text) || "expected base64url sealed data of 80 to 2048 characters",
    { expected: "base64url sealed data" },
  ),
)

const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

// ---------------------------------------------------------------------------------------------------
// Peer -> server
// ---------------------------------------------------------------------------------------------------

/** A peer announces itself; `token` is its enrollment token. */
export const Register = Schema.Struct({
  msg: Schema.Literal("register"),
  peer_id: Id,
  token: Token,
  server_ip: Label,
  os: Schema.optionalKey(Label),
  distro: Schema.optionalKey(Label),
  hostname: Schema.optionalKey(Label),
  agent_version: Schema.optionalKey(Label),
  /** What the operator said of the peer (`--label role=web`), to target runs by; replaces the last. */
  labels: Schema.optionalKey(Labels),
  /**
   * Chosen by the peer for this registration and echoed in the reply, so the peer can tell the
   * answer to its own registration from one a registration in its name by someone else drew.
   */
  nonce: Schema.optionalKey(Id),
  /**
   * When the peer made this registration (its clock). With `peer_key`, the server refuses one that is
   * not newer than the last it accepted from this peer, or too far from its own clock: a replay.
   */
  ts: Schema.optionalKey(EpochMillis),
  /**
   * The peer's identity key (Ed25519). The first accepted registration of a peer id binds the id to
   * it; from then on a registration for that id must be signed (`sig` trailer) by it.
   */
  peer_key: Schema.optionalKey(PublicKey),
  /**
   * A fresh X25519 key for this registration: the acceptance seals the session token (and Redis
   * credentials) to it, and the session is a sealed one (see docs/security.md).
   */
  box_key: Schema.optionalKey(PublicKey),
})
export type Register = typeof Register.Type

/** How a job ended, as seen by the peer. */
export const ResultStatus = Schema.Literals(["succeeded", "failed", "timed_out", "refused", "cancelled"])
export type ResultStatus = typeof ResultStatus.Type

/** A peer reports the output of the job identified by `ticket`. */
export const Result = Schema.Struct({
  msg: Schema.Literal("result"),
  ticket: Id,
  peer_id: Id,
  token: Token,
  result: ResultText,
  exit_code: Schema.optionalKey(
    Schema.NullOr(ExitCode).annotate({
      expected: `an integer from ${MIN_EXIT_CODE} to ${MAX_EXIT_CODE} or null`,
    }),
  ),
  status: Schema.optionalKey(ResultStatus),
  started_at: Schema.optionalKey(EpochMillis),
  finished_at: Schema.optionalKey(EpochMillis),
  truncated: Schema.optionalKey(Schema.Boolean),
})
export type Result = typeof Result.Type

/** A peer says it is alive; `running` is the number of jobs in progress. */
/**
 * "Still here", in both directions: a peer sends one every `heartbeat_ms` (with how many jobs it is
 * running); the server sends one to a peer it has sent nothing else for a while (with its id), so
 * the peer can tell a quiet server from a gone one.
 */
export const Heartbeat = Schema.Struct({
  msg: Schema.Literal("heartbeat"),
  peer_id: Id,
  token: Token,
  running: Schema.optionalKey(NonNegativeInt),
  server_id: Schema.optionalKey(Id),
})
export type Heartbeat = typeof Heartbeat.Type

/** A peer leaves; its session ends. */
export const Logout = Schema.Struct({
  msg: Schema.Literal("logout"),
  peer_id: Id,
  token: Token,
  reason: Schema.optionalKey(ReasonText),
})
export type Logout = typeof Logout.Type

/** Which stream of a running job an `output` chunk comes from. */
export const OutputStream = Schema.Literals(["stdout", "stderr"])
export type OutputStream = typeof OutputStream.Type

/**
 * A chunk of a running job's output, for people watching (never stored: the `result` carries the
 * whole output, once). Optional: a peer that never sends one works as before.
 */
export const Output = Schema.Struct({
  msg: Schema.Literal("output"),
  ticket: Id,
  peer_id: Id,
  token: Token,
  /** 0, 1, 2, … per ticket: a gap says a chunk was lost on the way. */
  seq: intBetween(0, MAX_OUTPUT_SEQ),
  stream: OutputStream,
  data: Text.check(isMaxUtf8Bytes(MAX_OUTPUT_CHUNK_BYTES)),
  /** Bytes the peer left out before this chunk (over its rate or its output cap). */
  dropped: Schema.optionalKey(intBetween(0, MAX_OUTPUT_SEQ)),
})
export type Output = typeof Output.Type

/** Every message a peer sends to the server. */
export const PeerMessage = Schema.Union([Register, Result, Heartbeat, Logout, Output])
export type PeerMessage = typeof PeerMessage.Type

// ---------------------------------------------------------------------------------------------------
// Server -> peer
// ---------------------------------------------------------------------------------------------------

/** The server accepts a registration; `token` is the new session token. */
export const RegisterAccepted = Schema.Struct({
  msg: Schema.Literal("register"),
  peer_id: Id,
  token: Token,
  status: Schema.Literal("accepted"),
  session_id: Schema.optionalKey(Id),
  server_id: Schema.optionalKey(Id),
  heartbeat_ms: Schema.optionalKey(PositiveInt),
  /** The registration's `nonce`, when it had one. */
  nonce: Schema.optionalKey(Id),
  /**
   * For a registration with a `box_key`: the session token and the peer's Redis credentials, sealed
   * to that key (JSON `{"token":…,"redis_user"?:…,"redis_password"?:…}`). `token` is then the
   * session id, a public name for the session.
   */
  sealed: Schema.optionalKey(Sealed),
  /** The key that signed this message (a peer checks it against the key it pinned). */
  cluster_key: Schema.optionalKey(PublicKey),
  /**
   * After a rotation of the cluster key: the previous key's signature over `cluster_key`, so a peer
   * that pinned the previous key can move to the new one.
   */
  key_endorsement: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(128))),
})
export type RegisterAccepted = typeof RegisterAccepted.Type

/** The server refuses a registration. */
export const RegisterRejected = Schema.Struct({
  msg: Schema.Literal("register"),
  peer_id: Id,
  token: Token,
  status: Schema.Literal("rejected"),
  reason: Schema.optionalKey(ReasonText),
  /** The registration's `nonce`, when it had one (absent on `session_expired`, which answers no registration). */
  nonce: Schema.optionalKey(Id),
})
export type RegisterRejected = typeof RegisterRejected.Type

/** What to run: the `job` object of a {@link Job} message. */
export const JobSpec = Schema.Struct({
  name: Label,
  os: Label,
  distro: Label,
  command: Command,
  timeout_ms: Schema.optionalKey(TimeoutMs),
})
export type JobSpec = typeof JobSpec.Type

/**
 * The `msg` of a job. The seed protocol sends jobs as `"register"` messages carrying a `job` field;
 * in code the kind is `"job"`. Both literals decode to `"job"`, so code switches on one value, and
 * encoding emits `"register"`, the seed's own form, so a peer that knows only the seed sees its jobs.
 */
const JobMsg = Schema.Literals(["job", "register"]).pipe(
  Schema.decodeTo(Schema.Literal("job"), {
    decode: SchemaGetter.transform(() => "job" as const),
    encode: SchemaGetter.transform(() => "register" as const),
  }),
)

/** The server hands the job identified by `ticket` to a peer. */
export const Job = Schema.Struct({
  msg: JobMsg,
  ticket: Id,
  peer_id: Id,
  token: Token,
  job: JobSpec,
})
export type Job = typeof Job.Type

/** The server tells every peer that it is going away. */
export const Shutdown = Schema.Struct({
  msg: Schema.Literal("shutdown"),
  token: Token,
  reason: ReasonText,
  server_id: Schema.optionalKey(Id),
})
export type Shutdown = typeof Shutdown.Type

/**
 * The server asks a peer to stop the job of `ticket` (its whole process group) and report it
 * `cancelled`. Optional: a peer that does not know it ignores it, and its job ends as it ends.
 */
export const Cancel = Schema.Struct({
  msg: Schema.Literal("cancel"),
  ticket: Id,
  peer_id: Id,
  token: Token,
  reason: ReasonText,
})
export type Cancel = typeof Cancel.Type

/**
 * Every message the server sends to a peer. `Job` comes first so that a `"register"` message carrying
 * a `job` field is a job, as in the codec.
 */
export const ServerMessage = Schema.Union([
  Job,
  RegisterAccepted,
  RegisterRejected,
  Shutdown,
  Heartbeat,
  Cancel,
])
export type ServerMessage = typeof ServerMessage.Type

/** Any wire message, in either direction. */
export type Message = PeerMessage | ServerMessage

// ---------------------------------------------------------------------------------------------------
// Message kinds
// ---------------------------------------------------------------------------------------------------

/** The `msg` values a peer may send. */
export const PEER_MSG_KINDS = ["register", "result", "heartbeat", "logout", "output"] as const
/** The `msg` values the server may send (`"register"` covers accepted, rejected and the seed's job alias). */
export const SERVER_MSG_KINDS = ["register", "job", "shutdown", "heartbeat", "cancel"] as const

export const isRegister = (message: PeerMessage): message is Register => message.msg === "register"
export const isResult = (message: PeerMessage): message is Result => message.msg === "result"
export const isHeartbeat = (message: PeerMessage): message is Heartbeat => message.msg === "heartbeat"
export const isLogout = (message: PeerMessage): message is Logout => message.msg === "logout"
export const isOutput = (message: PeerMessage): message is Output => message.msg === "output"

export const isRegisterAccepted = (message: ServerMessage): message is RegisterAccepted =>
  message.msg === "register" && message.status === "accepted"
export const isRegisterRejected = (message: ServerMessage): message is RegisterRejected =>
  message.msg === "register" && message.status === "rejected"
export const isJob = (message: ServerMessage): message is Job => message.msg === "job"
export const isShutdown = (message: ServerMessage): message is Shutdown => message.msg === "shutdown"
export const isCancel = (message: ServerMessage): message is Cancel => message.msg === "cancel"

/** The kind of a server message, telling apart the two `"register"` replies (e.g. for logs and metrics). */
export type ServerMessageKind =
  | "register_accepted"
  | "register_rejected"
  | "job"
  | "shutdown"
  | "heartbeat"
  | "cancel"

export const serverMessageKind = (message: ServerMessage): ServerMessageKind => {
  switch (message.msg) {
    case "register":
      return message.status === "accepted" ? "register_accepted" : "register_rejected"
    case "job":
      return "job"
    case "shutdown":
      return "shutdown"
    case "heartbeat":
      return "heartbeat"
    case "cancel":
      return "cancel"
  }
}

// ---------------------------------------------------------------------------------------------------
// Rejection reasons the peer acts on
// ---------------------------------------------------------------------------------------------------

/**
 * Reasons of a rejected `register` that mean "not now" rather than "never": the peer registers
 * again (after a backoff) instead of giving up. Any other reason is final.
 */
export const RejectReason = {
  /** The server instance is stopping; another instance, or the next one, will take the peer. */
  shuttingDown: "server_shutting_down",
  /** The peer spoke for a session the server no longer has (timed out, or its server is gone). */
  sessionExpired: "session_expired",
  /** The token is not an active enrollment token. Final. */
  unknownToken: "unknown or revoked token",
  /** The peer id is bound to an identity key, and this registration is not signed by it. Final. */
  wrongIdentity: "peer id is bound to another identity key",
  /** Signed, but not newer than the last registration accepted from this peer, or far off the clock. */
  replayed: "replayed or stale registration",
  /** The token is bound to another peer id (a provisioned peer's own token). Final. */
  wrongPeer: "token is bound to another peer id",
  /** Too many registrations of this peer id in a short time: try again later. */
  tooMany: "too many registrations",
} as const

/** The reply to a rejected registration carries no token: the server never echoes a secret back. */
export const REJECTED_TOKEN = "none"

export const isRetryableRejection = (reason: string | undefined): boolean =>
  reason === RejectReason.shuttingDown ||
  reason === RejectReason.sessionExpired ||
  reason === RejectReason.tooMany ||
  reason === RejectReason.replayed

/** Logout reasons with a fixed meaning (`registration_log.reason`, `peer_sessions.logout_reason`). */
export const LogoutReason = {
  /** The peer was stopped (Ctrl+C on the peer). */
  peerShutdown: "peer_shutdown",
  /** The server instance serving the peer stopped; also what a peer says once it has finished. */
  serverShutdown: "server_shutdown",
  /** Nothing heard from the peer for the heartbeat grace period. */
  timeout: "timeout",
  /** The same peer id registered again: the older session ends. */
  replaced: "replaced",
  /** The server instance holding the session died; another instance closed the session. */
  serverLost: "server_lost",
  /** The server could not finish opening the session (it will answer the registration again). */
  startFailed: "start_failed",
  /** The server failed while serving the session (a defect, logged); the peer registers again. */
  serverError: "server_error",
  /** The session's enrollment token (or the peer) was revoked by an operator. */
  revoked: "revoked",
} as const
