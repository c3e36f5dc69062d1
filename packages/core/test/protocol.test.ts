import { assert, describe, it } from "@effect/vitest"
import { Arbitrary, Effect, Result } from "effect"
import fc from "fast-check"
import {
  decodePeerMessage,
  decodeServerMessage,
  encodeMessage,
  encodeMessageResult,
  isJob,
  isRegister,
  isRegisterAccepted,
  isRegisterRejected,
  isResult,
  isShutdown,
  type Job,
  MAX_COMMAND_BYTES,
  MAX_EPOCH_MILLIS,
  MAX_EXIT_CODE,
  MAX_ID_LENGTH,
  MAX_MESSAGE_BYTES,
  MAX_RESULT_BYTES,
  MAX_TIMEOUT_MS,
  MIN_EXIT_CODE,
  type PeerMessage,
  PeerMessage as PeerMessageSchema,
  ProtocolError,
  type ProtocolErrorReason,
  type ServerMessage,
  ServerMessage as ServerMessageSchema,
  serverMessageKind,
  utf8ByteLength,
} from "../src/protocol/index.ts"

const REASONS: ReadonlyArray<ProtocolErrorReason> = [
  "too_large",
  "not_json",
  "not_an_object",
  "unknown_msg",
  "invalid_shape",
]

const expectOk = <A>(result: Result.Result<A, ProtocolError>): A => {
  if (Result.isFailure(result))
    assert.fail(`expected a message, got ${result.failure.reason}: ${result.failure.message}`)
  return result.success
}

const expectError = <A>(
  result: Result.Result<A, ProtocolError>,
  reason: ProtocolErrorReason,
  ...fragments: ReadonlyArray<string>
): ProtocolError => {
  if (Result.isSuccess(result))
    assert.fail(`expected ${reason}, got a message: ${JSON.stringify(result.success)}`)
  const error = result.failure
  assert.instanceOf(error, ProtocolError)
  assert.strictEqual(error._tag, "ProtocolError")
  assert.strictEqual(error.reason, reason, error.message)
  for (const fragment of fragments) assert.include(error.message, fragment)
  return error
}

const bytes = (text: string) => new TextEncoder().encode(text)

// ---------------------------------------------------------------------------------------------------
// The seed examples, verbatim
// ---------------------------------------------------------------------------------------------------

const SEED = {
  register: `{ "msg": "register", "peer_id": "...", "token": "...", "server_ip": "..." }`,
  accepted: `{ "msg": "register", "peer_id": "...", "token": "...", "status": "accepted" }`,
  rejected: `{ "msg": "register", "peer_id": "...", "token": "...", "status": "rejected" }`,
  job1: `{ "msg": "register",  "ticket": "126743", "peer_id": "...", "token": "...", "job": { "name":"List Files", "os":"linux", "distro": "debian", "command": "ls -al" } }`,
  job2: `{ "msg": "register",  "ticket": "864678", "peer_id": "...", "token": "...", "job": {  "name":"Free Memory Space", "os":"linux", "distro": "centos", "command": "free -h" } }`,
  result1: `{ "msg": "result",  "ticket": "126743", "peer_id": "...", "token": "...", "result": "file1 file2 file3"}`,
  result2: `{ "msg": "result",  "ticket": "864678", "peer_id": "...", "token": "...", "result": "total:7.4G used: 514M free:1.6G"}`,
  shutdown: `{ "msg": "shutdown", "token": "...", "reason":"Upgrade server"}`,
} as const

describe("seed examples decode verbatim", () => {
  it("peer register", () => {
    const message = expectOk(decodePeerMessage(SEED.register))
    assert.deepStrictEqual(message, { msg: "register", peer_id: "...", token: "...", server_ip: "..." })
    assert.isTrue(isRegister(message))
  })

  it("register accepted", () => {
    const message = expectOk(decodeServerMessage(SEED.accepted))
    assert.deepStrictEqual(message, { msg: "register", peer_id: "...", token: "...", status: "accepted" })
    assert.isTrue(isRegisterAccepted(message))
    assert.isFalse(isRegisterRejected(message))
    assert.strictEqual(serverMessageKind(message), "register_accepted")
  })

  it("register rejected", () => {
    const message = expectOk(decodeServerMessage(SEED.rejected))
    assert.deepStrictEqual(message, { msg: "register", peer_id: "...", token: "...", status: "rejected" })
    assert.isTrue(isRegisterRejected(message))
    assert.isFalse(isRegisterAccepted(message))
    assert.strictEqual(serverMessageKind(message), "register_rejected")
  })

  it.each([
    {
      raw: SEED.job1,
      expected: {
        msg: "job",
        ticket: "126743",
        peer_id: "...",
        token: "...",
        job: { name: "List Files", os: "linux", distro: "debian", command: "ls -al" },
      },
    },
    {
      raw: SEED.job2,
      expected: {
        msg: "job",
        ticket: "864678",
        peer_id: "...",
        token: "...",
        job: { name: "Free Memory Space", os: "linux", distro: "centos", command: "free -h" },
      },
    },
  ] as const)("job sent as the seed's register alias: ticket $expected.ticket", ({ raw, expected }) => {
    const message = expectOk(decodeServerMessage(raw))
    assert.deepStrictEqual(message, expected)
    assert.isTrue(isJob(message))
    assert.strictEqual(serverMessageKind(message), "job")
    // Encoding emits the seed's own form, which every receiver decodes.
    const encoded = encodeMessage(message)
    assert.strictEqual(JSON.parse(encoded).msg, "register")
    assert.deepStrictEqual(expectOk(decodeServerMessage(encoded)), expected)
  })

  it.each([
    { raw: SEED.result1, ticket: "126743", result: "file1 file2 file3" },
    { raw: SEED.result2, ticket: "864678", result: "total:7.4G used: 514M free:1.6G" },
  ] as const)("result for ticket $ticket", ({ raw, ticket, result }) => {
    const message = expectOk(decodePeerMessage(raw))
    assert.deepStrictEqual(message, { msg: "result", ticket, peer_id: "...", token: "...", result })
    assert.isTrue(isResult(message))
  })

  it("shutdown", () => {
    const message = expectOk(decodeServerMessage(SEED.shutdown))
    assert.deepStrictEqual(message, { msg: "shutdown", token: "...", reason: "Upgrade server" })
    assert.isTrue(isShutdown(message))
    assert.strictEqual(serverMessageKind(message), "shutdown")
  })

  it("every seed example also decodes from UTF-8 bytes", () => {
    const peer = [SEED.register, SEED.result1, SEED.result2]
    const server = [SEED.accepted, SEED.rejected, SEED.job1, SEED.job2, SEED.shutdown]
    for (const raw of peer) assert.deepStrictEqual(decodePeerMessage(bytes(raw)), decodePeerMessage(raw))
    for (const raw of server)
      assert.deepStrictEqual(decodeServerMessage(bytes(raw)), decodeServerMessage(raw))
  })
})

describe("direction", () => {
  it("a server-only kind sent to the peer->server decoder is an unknown msg", () => {
    expectError(decodePeerMessage(SEED.shutdown), "unknown_msg", `"shutdown"`)
    expectError(
      decodePeerMessage(`{"msg":"job","ticket":"1","peer_id":"p","token":"t"}`),
      "unknown_msg",
      `"job"`,
    )
  })

  it("a peer-only kind sent to the server->peer decoder is an unknown msg", () => {
    expectError(decodeServerMessage(SEED.result1), "unknown_msg", `"result"`)
    expectError(decodeServerMessage(`{"msg":"logout","peer_id":"p","token":"t"}`), "unknown_msg")
  })

  it("heartbeat goes both ways: the server's names its instance", () => {
    const raw = `{"msg":"heartbeat","peer_id":"p","token":"t","server_id":"server-b"}`
    const fromServer = decodeServerMessage(raw)
    assert.isTrue(Result.isSuccess(fromServer))
    const message = (fromServer as Result.Success<ServerMessage, never>).success
    assert.strictEqual(serverMessageKind(message), "heartbeat")
    assert.deepStrictEqual(message, { msg: "heartbeat", peer_id: "p", token: "t", server_id: "server-b" })
    assert.isTrue(
      Result.isSuccess(decodePeerMessage(`{"msg":"heartbeat","peer_id":"p","token":"t","running":2}`)),
    )
  })

  it("a register in the wrong direction is an invalid shape, told apart by its fields", () => {
    // The peer's register has no status, the server's replies and the job alias have no server_ip.
    expectError(decodeServerMessage(SEED.register), "invalid_shape", "register.status: missing")
    expectError(decodePeerMessage(SEED.accepted), "invalid_shape", "register.server_ip: missing")
    expectError(decodePeerMessage(SEED.job1), "invalid_shape", "register.server_ip: missing")
  })

  it("a register reply with an unknown status names both statuses", () => {
    const raw = `{ "msg": "register", "peer_id": "p", "token": "t", "status": "maybe" }`
    expectError(decodeServerMessage(raw), "invalid_shape", "register.status:", `"accepted"`, `"rejected"`)
  })

  it("a register carrying a job is a job even with a status", () => {
    const raw = `{"msg":"register","status":"accepted","ticket":"1","peer_id":"p","token":"t","job":{"name":"n","os":"o","distro":"d","command":"c"}}`
    assert.isTrue(isJob(expectOk(decodeServerMessage(raw))))
  })
})

// ---------------------------------------------------------------------------------------------------
// Round trips, with arbitraries derived from the schemas (Effect's own Arbitrary engine, via it.prop)
// ---------------------------------------------------------------------------------------------------

describe("round trips", () => {
  it.prop("every peer message kind encodes and decodes to itself", [PeerMessageSchema], ([message]) => {
    const encoded = encodeMessage(message)
    assert.isAtMost(utf8ByteLength(encoded), MAX_MESSAGE_BYTES)
    const decoded = expectOk(decodePeerMessage(encoded))
    assert.deepStrictEqual(decoded, message)
    assert.strictEqual(encodeMessage(decoded), encoded)
    assert.deepStrictEqual(expectOk(decodePeerMessage(bytes(encoded))), decoded)
  })

  it.prop("every server message kind encodes and decodes to itself", [ServerMessageSchema], ([message]) => {
    const encoded = encodeMessage(message)
    const decoded = expectOk(decodeServerMessage(encoded))
    assert.deepStrictEqual(decoded, message)
    assert.strictEqual(encodeMessage(decoded), encoded)
  })

  it.prop("a job sent as the register alias decodes to the same job", [ServerMessageSchema], ([message]) => {
    if (!isJob(message)) return
    const alias = JSON.stringify({ ...JSON.parse(encodeMessage(message)), msg: "register" })
    assert.deepStrictEqual(expectOk(decodeServerMessage(alias)), message)
  })

  it.effect("the derived arbitraries produce every kind", () =>
    Effect.gen(function* () {
      const peer = yield* Arbitrary.sampleEffect(Arbitrary.schema(PeerMessageSchema), { count: 200, seed: 1 })
      assert.sameMembers(
        [...new Set(peer.map((m) => m.msg))],
        ["register", "result", "heartbeat", "logout", "output"],
      )
      const server = yield* Arbitrary.sampleEffect(Arbitrary.schema(ServerMessageSchema), {
        count: 200,
        seed: 1,
      })
      assert.sameMembers(
        [...new Set(server.map(serverMessageKind))],
        ["register_accepted", "register_rejected", "job", "shutdown", "heartbeat", "cancel"],
      )
    }),
  )

  it("decodes cancel, output and a cancelled result as docs/protocol.md shows them", () => {
    const cancel = decodeServerMessage(
      '{"msg":"cancel","ticket":"126743","peer_id":"web-01","token":"sess-8d41e0","reason":"cancelled by alice: wrong host"}',
    )
    assert.isTrue(Result.isSuccess(cancel))
    if (Result.isSuccess(cancel)) assert.strictEqual(serverMessageKind(cancel.success), "cancel")
    const output = decodePeerMessage(
      '{"msg":"output","ticket":"126743","peer_id":"web-01","token":"sess-8d41e0","seq":0,"stream":"stdout","data":"start ","dropped":12}',
    )
    assert.isTrue(Result.isSuccess(output))
    const cancelled = decodePeerMessage(
      '{"msg":"result","ticket":"126743","peer_id":"web-01","token":"sess-8d41e0","result":"start ","exit_code":null,"status":"cancelled"}',
    )
    assert.isTrue(Result.isSuccess(cancelled))
    const tooBig = decodePeerMessage(
      JSON.stringify({
        msg: "output",
        ticket: "1",
        peer_id: "p",
        token: "t",
        seq: 0,
        stream: "stdout",
        data: "a".repeat(4097),
      }),
    )
    assert.isTrue(Result.isFailure(tooBig))
    if (Result.isFailure(tooBig))
      assert.include(tooBig.failure.message, "output.data: expected at most 4096 UTF-8 bytes")
    const badStream = decodePeerMessage(
      '{"msg":"output","ticket":"1","peer_id":"p","token":"t","seq":0,"stream":"stdin","data":""}',
    )
    assert.isTrue(Result.isFailure(badStream))
  })

  it("encoding drops fields the schema does not know", () => {
    const job = {
      msg: "job",
      ticket: "1",
      peer_id: "p",
      token: "t",
      job: { name: "n", os: "linux", distro: "debian", command: "uptime", internal: true },
      internal: "not for the wire",
    } as Job
    assert.deepStrictEqual(JSON.parse(encodeMessage(job)), {
      msg: "register",
      ticket: "1",
      peer_id: "p",
      token: "t",
      job: { name: "n", os: "linux", distro: "debian", command: "uptime" },
    })
  })

  it("encoding refuses a value that breaks the contract instead of sending it", () => {
    const tooLong = { msg: "heartbeat", peer_id: "p".repeat(MAX_ID_LENGTH + 1), token: "t" } as const
    const error = expectError(encodeMessageResult(tooLong), "invalid_shape", "heartbeat.peer_id:")
    assert.throws(() => encodeMessage(tooLong), error.message)
    // Control characters expand sixfold in JSON: a result within its own limit can still overflow.
    const noisy = {
      msg: "result",
      ticket: "1",
      peer_id: "p",
      token: "t",
      result: "\u0001".repeat(200_000),
    } as const
    expectError(encodeMessageResult(noisy), "too_large", `${MAX_MESSAGE_BYTES}`)
  })
})

// ---------------------------------------------------------------------------------------------------
// Garbage never throws (fast-check)
// ---------------------------------------------------------------------------------------------------

const assertHandled = (result: Result.Result<unknown, ProtocolError>, redecode: (raw: string) => unknown) => {
  if (Result.isFailure(result)) {
    assert.instanceOf(result.failure, ProtocolError)
    assert.include(REASONS, result.failure.reason)
    assert.isString(result.failure.message)
    assert.isNotEmpty(result.failure.message)
  } else {
    // Whatever was accepted is a valid message that survives a round trip.
    assert.deepStrictEqual(redecode(encodeMessage(result.success as PeerMessage | ServerMessage)), result)
  }
}

const KNOWN_KEYS = [
  "peer_id",
  "token",
  "server_ip",
  "ticket",
  "result",
  "status",
  "exit_code",
  "started_at",
  "running",
  "reason",
  "session_id",
  "heartbeat_ms",
] as const

/** Objects that look like messages: a plausible or odd `msg`, known keys with values of any JSON type. */
const messageLike = fc.record(
  {
    msg: fc.oneof(
      fc.constantFrom("register", "result", "heartbeat", "logout", "job", "shutdown"),
      fc.jsonValue(),
    ),
    ...Object.fromEntries(KNOWN_KEYS.map((key) => [key, fc.oneof(fc.string(), fc.jsonValue())])),
    job: fc.oneof(
      fc.jsonValue(),
      fc.record(
        {
          name: fc.jsonValue(),
          os: fc.string(),
          distro: fc.string(),
          command: fc.oneof(fc.string(), fc.jsonValue()),
        },
        { requiredKeys: [] },
      ),
    ),
  },
  { requiredKeys: [] },
)

describe("decoding never throws", () => {
  const decoders = [
    { name: "peer->server", decode: decodePeerMessage },
    { name: "server->peer", decode: decodeServerMessage },
  ] as const

  for (const { name, decode } of decoders) {
    it(`${name}: arbitrary strings`, () => {
      fc.assert(
        fc.property(fc.oneof(fc.string({ unit: "binary" }), fc.string(), fc.json()), (raw) => {
          assertHandled(decode(raw), decode)
        }),
        { numRuns: 500 },
      )
    })

    it(`${name}: arbitrary bytes`, () => {
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 512 }), (raw) => {
          assertHandled(decode(raw), decode)
        }),
        { numRuns: 500 },
      )
    })

    it(`${name}: arbitrary message-like objects`, () => {
      fc.assert(
        fc.property(messageLike, (object) => {
          const raw = JSON.stringify(object)
          assertHandled(decode(raw), decode)
          assertHandled(decode(bytes(raw)), decode)
        }),
        { numRuns: 1000 },
      )
    })
  }
})

// ---------------------------------------------------------------------------------------------------
// Every failure reason, named
// ---------------------------------------------------------------------------------------------------

const resultMessage = (fields: Record<string, unknown>) =>
  JSON.stringify({ msg: "result", ticket: "126743", peer_id: "p1", token: "t1", result: "ok", ...fields })

describe("failure reasons", () => {
  it("too_large: over MAX_MESSAGE_BYTES, as a string or as bytes, before any parsing", () => {
    const huge = resultMessage({ result: "x".repeat(MAX_MESSAGE_BYTES) })
    expectError(decodePeerMessage(huge), "too_large", `${MAX_MESSAGE_BYTES}`)
    expectError(decodePeerMessage(bytes(huge)), "too_large", `${MAX_MESSAGE_BYTES}`)
    // Not even JSON: size is checked first.
    expectError(decodeServerMessage("{".repeat(MAX_MESSAGE_BYTES + 1)), "too_large")
  })

  it("too_large: the limit counts UTF-8 bytes, not characters", () => {
    const text = "é".repeat(MAX_MESSAGE_BYTES / 2 + 1) // fewer characters than the limit, more bytes
    assert.isBelow(text.length, MAX_MESSAGE_BYTES)
    expectError(decodePeerMessage(text), "too_large", `${MAX_MESSAGE_BYTES + 2} bytes`)
  })

  it("a message of exactly MAX_MESSAGE_BYTES passes the size check", () => {
    const envelope = resultMessage({ result: "" })
    const exact = resultMessage({ result: "x".repeat(MAX_MESSAGE_BYTES - utf8ByteLength(envelope)) })
    assert.strictEqual(utf8ByteLength(exact), MAX_MESSAGE_BYTES)
    // ...and then fails on the result's own limit.
    expectError(
      decodePeerMessage(exact),
      "invalid_shape",
      "result.result:",
      `${MAX_RESULT_BYTES} UTF-8 bytes`,
    )
  })

  it("not_json: broken JSON, empty input, invalid UTF-8", () => {
    expectError(decodePeerMessage(`{ "msg": "result", `), "not_json", "not valid JSON")
    expectError(decodeServerMessage(""), "not_json")
    expectError(decodeServerMessage("{'msg': 'shutdown'}"), "not_json")
    expectError(decodePeerMessage(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), "not_json", "UTF-8")
  })

  it.each([
    { raw: "[]", kind: "an array" },
    { raw: `[${SEED.register}]`, kind: "an array" },
    { raw: "42", kind: "a number" },
    { raw: `"register"`, kind: "a string" },
    { raw: "true", kind: "a boolean" },
    { raw: "null", kind: "null" },
  ])("not_an_object: $raw", ({ raw, kind }) => {
    expectError(decodePeerMessage(raw), "not_an_object", kind)
    expectError(decodeServerMessage(raw), "not_an_object", kind)
  })

  it("unknown_msg: names the msg value, truncated", () => {
    expectError(
      decodePeerMessage(`{"msg":"hello","peer_id":"p","token":"t"}`),
      "unknown_msg",
      `"hello"`,
      "register",
    )
    expectError(decodeServerMessage(`{"msg":"hello"}`), "unknown_msg", `"hello"`, "shutdown")
    const long = "m".repeat(10_000)
    const error = expectError(decodePeerMessage(JSON.stringify({ msg: long })), "unknown_msg", "mmmm")
    assert.isBelow(error.message.length, 300)
  })

  it("unknown_msg: missing or non-string msg", () => {
    expectError(decodePeerMessage(`{"peer_id":"p","token":"t"}`), "unknown_msg", `no "msg"`)
    expectError(decodePeerMessage(`{"msg":7}`), "unknown_msg", "a number")
    expectError(decodeServerMessage(`{"msg":null}`), "unknown_msg", "null")
    // Only own keys count: "constructor" or "__proto__" is not a kind.
    expectError(decodePeerMessage(`{"msg":"constructor"}`), "unknown_msg")
    expectError(decodeServerMessage(`{"msg":"__proto__"}`), "unknown_msg")
  })

  it("invalid_shape: missing field", () => {
    const raw = `{ "msg": "result", "peer_id": "p", "token": "t", "result": "ok" }`
    expectError(decodePeerMessage(raw), "invalid_shape", "result.ticket: missing")
  })

  it("invalid_shape: wrong type", () => {
    expectError(
      decodePeerMessage(resultMessage({ ticket: 126743 })),
      "invalid_shape",
      "result.ticket: expected a string",
    )
    expectError(decodePeerMessage(resultMessage({ exit_code: "0" })), "invalid_shape", "result.exit_code:")
    expectError(decodePeerMessage(resultMessage({ exit_code: 1.5 })), "invalid_shape", "result.exit_code:")
    expectError(decodePeerMessage(resultMessage({ status: "done" })), "invalid_shape", "result.status:")
    expectError(
      decodeServerMessage(`{"msg":"job","ticket":"1","peer_id":"p","token":"t","job":"ls"}`),
      "invalid_shape",
      "job.job: expected an object",
    )
  })

  it("invalid_shape: several problems are all named", () => {
    const error = expectError(
      decodePeerMessage(`{"msg":"heartbeat","peer_id":"","running":-1}`),
      "invalid_shape",
      "heartbeat.peer_id:",
      "heartbeat.token: missing",
      "heartbeat.running:",
    )
    assert.notInclude(error.message, "undefined")
  })

  it("invalid_shape: over-limit fields", () => {
    const peerId = "p".repeat(MAX_ID_LENGTH + 1)
    expectError(
      decodePeerMessage(`{"msg":"heartbeat","peer_id":"${peerId}","token":"t"}`),
      "invalid_shape",
      "heartbeat.peer_id:",
      `${MAX_ID_LENGTH}`,
    )
    // An id at the limit, counted in code points (each of these is two UTF-16 units).
    const astral = "😀".repeat(MAX_ID_LENGTH)
    expectOk(decodePeerMessage(JSON.stringify({ msg: "heartbeat", peer_id: astral, token: "t" })))
    // The command limit counts UTF-8 bytes.
    const command = "é".repeat(MAX_COMMAND_BYTES / 2 + 1)
    const job = {
      msg: "job",
      ticket: "1",
      peer_id: "p",
      token: "t",
      job: { name: "n", os: "o", distro: "d", command },
    }
    expectError(
      decodeServerMessage(JSON.stringify(job)),
      "invalid_shape",
      "job.job.command:",
      `${MAX_COMMAND_BYTES}`,
    )
    expectError(
      decodePeerMessage(resultMessage({ result: "x".repeat(MAX_RESULT_BYTES + 1) })),
      "invalid_shape",
    )
    expectOk(decodePeerMessage(resultMessage({ result: "x".repeat(MAX_RESULT_BYTES) })))
  })

  it("invalid_shape: what the database columns cannot hold", () => {
    // `exit_code` and `timeout_ms` are `integer` columns: 32-bit.
    for (const exit_code of [MIN_EXIT_CODE, -1, 0, 255, MAX_EXIT_CODE, null]) {
      expectOk(decodePeerMessage(resultMessage({ exit_code })))
    }
    for (const exit_code of [MAX_EXIT_CODE + 1, 2 ** 32, MIN_EXIT_CODE - 1]) {
      expectError(
        decodePeerMessage(resultMessage({ exit_code })),
        "invalid_shape",
        `result.exit_code: expected an integer from ${MIN_EXIT_CODE} to ${MAX_EXIT_CODE}`,
      )
    }
    const job = (spec: Record<string, unknown>) =>
      JSON.stringify({
        msg: "job",
        ticket: "1",
        peer_id: "p",
        token: "t",
        job: { name: "n", os: "o", distro: "d", command: "c", ...spec },
      })
    expectOk(decodeServerMessage(job({ timeout_ms: MAX_TIMEOUT_MS })))
    expectError(
      decodeServerMessage(job({ timeout_ms: MAX_TIMEOUT_MS + 1 })),
      "invalid_shape",
      `job.job.timeout_ms: expected an integer from 1 to ${MAX_TIMEOUT_MS}, got ${MAX_TIMEOUT_MS + 1}`,
    )
    // Epoch milliseconds become a JS Date and a timestamptz.
    expectOk(decodePeerMessage(resultMessage({ started_at: 0, finished_at: MAX_EPOCH_MILLIS })))
    expectError(
      decodePeerMessage(resultMessage({ finished_at: MAX_EPOCH_MILLIS + 1 })),
      "invalid_shape",
      `result.finished_at: expected an integer from 0 to ${MAX_EPOCH_MILLIS}`,
    )
    // A `text` column cannot hold U+0000, whichever string field carries it.
    const nul = "a\u0000b"
    expectError(
      decodePeerMessage(resultMessage({ result: nul })),
      "invalid_shape",
      "result.result: expected no U+0000 (NUL) character",
    )
    expectError(decodePeerMessage(resultMessage({ ticket: nul })), "invalid_shape", "result.ticket:")
    const register = { msg: "register", peer_id: "p", token: "t", server_ip: "10.0.0.1" }
    for (const field of ["peer_id", "token", "server_ip", "os", "distro", "hostname", "agent_version"]) {
      expectError(
        decodePeerMessage(JSON.stringify({ ...register, [field]: nul })),
        "invalid_shape",
        `register.${field}: expected no U+0000`,
      )
    }
    expectError(
      decodePeerMessage(JSON.stringify({ msg: "logout", peer_id: "p", token: "t", reason: nul })),
      "invalid_shape",
      "logout.reason:",
    )
    for (const field of ["name", "os", "distro", "command"]) {
      expectError(
        decodeServerMessage(job({ [field]: nul })),
        "invalid_shape",
        `job.job.${field}: expected no U+0000`,
      )
    }
  })

  it("invalid_shape: a size failure says the limit and the size found", () => {
    const command = "x".repeat(MAX_COMMAND_BYTES + 1024)
    expectError(
      decodeServerMessage(
        JSON.stringify({
          msg: "job",
          ticket: "1",
          peer_id: "p",
          token: "t",
          job: { name: "n", os: "o", distro: "d", command },
        }),
      ),
      "invalid_shape",
      `job.job.command: expected at most ${MAX_COMMAND_BYTES} UTF-8 bytes, got ${MAX_COMMAND_BYTES + 1024}`,
    )
    expectError(
      decodePeerMessage(
        JSON.stringify({ msg: "heartbeat", peer_id: "😀".repeat(MAX_ID_LENGTH + 2), token: "t" }),
      ),
      "invalid_shape",
      `heartbeat.peer_id: expected at most ${MAX_ID_LENGTH} code points, got ${MAX_ID_LENGTH + 2}`,
    )
  })

  it("unknown extra fields are ignored and dropped", () => {
    const raw = `{"msg":"heartbeat","peer_id":"p","token":"t","running":2,"load":[0.1,0.2],"future":{"x":1}}`
    assert.deepStrictEqual(expectOk(decodePeerMessage(raw)), {
      msg: "heartbeat",
      peer_id: "p",
      token: "t",
      running: 2,
    })
  })
})

// ---------------------------------------------------------------------------------------------------
// The token never leaks into an error message
// ---------------------------------------------------------------------------------------------------

describe("the token never appears in an error message", () => {
  const secret = fc.stringMatching(/^[A-Za-z0-9_-]{24,40}$/).map((s) => `tok_${s}`)

  /** Broken messages that all carry the secret somewhere. */
  const broken = (token: string): ReadonlyArray<string> => [
    JSON.stringify({ msg: "result", ticket: 1, peer_id: "p", token, result: "x" }),
    JSON.stringify({ msg: "result", ticket: "1", peer_id: "p", token: [token], result: "x" }),
    JSON.stringify({ msg: "heartbeat", peer_id: "p", token: token.repeat(50) }),
    JSON.stringify({ msg: "heartbeat", peer_id: token.repeat(10), token }),
    JSON.stringify({ msg: token, token }),
    JSON.stringify({ msg: `hello ${token}`, token }),
    JSON.stringify({ msg: "register", peer_id: "p", token, status: token }),
    JSON.stringify({ msg: "shutdown", token, reason: 5 }),
    `{"msg":"logout","token":"${token}",`,
    `["${token}"]`,
    `"${token}"`,
  ]

  it("in any decoding failure", () => {
    fc.assert(
      fc.property(secret, (token) => {
        for (const raw of broken(token)) {
          const results: ReadonlyArray<Result.Result<unknown, ProtocolError>> = [
            decodePeerMessage(raw),
            decodeServerMessage(raw),
          ]
          for (const result of results) {
            if (Result.isFailure(result)) {
              assert.notInclude(result.failure.message, token)
              assert.notInclude(String(result.failure), token)
            }
          }
        }
      }),
      { numRuns: 200 },
    )
  })

  it("in encoding failures", () => {
    const token = "tok_do-not-log-me-0123456789"
    const error = expectError(
      encodeMessageResult({ msg: "logout", peer_id: "", token, reason: "bye" }),
      "invalid_shape",
      "logout.peer_id:",
    )
    assert.notInclude(error.message, token)
  })
})
