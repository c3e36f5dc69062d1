import { assert } from "@effect/vitest"
import { type Envelope, Protocol, Transport } from "@picus/core"
import { eventually } from "@picus/core/testing"
import { Effect, Result } from "effect"

/**
 * A hand-driven peer speaking the wire protocol, to send what a real agent never would. It
 * registers (as linux/debian; with `agentVersion`, as a peer that heartbeats), takes its acceptance
 * and the first `jobs` job messages.
 */
export const rawPeer = Effect.fnUntraced(function* (
  peerId: string,
  token: string,
  options: { readonly agentVersion?: string; readonly jobs?: number } = {},
) {
  const transport = yield* Transport
  const reader = yield* transport.inboxReader(peerId)
  let cursor = yield* transport.inboxTail(peerId)
  const next = Effect.gen(function* () {
    const [entry] = yield* eventually(
      reader
        .read(cursor, { count: 1, blockMs: 200 })
        .pipe(Effect.map((es) => (es.length > 0 ? es : undefined))),
      `a message for ${peerId}`,
    )
    cursor = (entry as Envelope).id
    const decoded = Protocol.decodeServerMessage((entry as Envelope).payload)
    assert.isTrue(Result.isSuccess(decoded))
    return (decoded as Result.Success<Protocol.ServerMessage, never>).success
  })
  yield* transport.sendUplink(
    Protocol.encodeMessage({
      msg: "register",
      peer_id: peerId,
      token,
      server_ip: "10.1.2.3",
      os: "linux",
      distro: "debian",
      ...(options.agentVersion === undefined ? {} : { agent_version: options.agentVersion }),
    }),
  )
  const accepted = yield* next
  assert.strictEqual(Protocol.serverMessageKind(accepted), "register_accepted")
  const session = accepted.token
  const jobs: Array<Protocol.Job> = []
  for (let i = 0; i < (options.jobs ?? 2); i++) jobs.push((yield* next) as Protocol.Job)
  const sendResult = (ticket: string, result: string, tokenToUse = session) =>
    transport.sendUplink(
      Protocol.encodeMessage({
        msg: "result",
        ticket,
        peer_id: peerId,
        token: tokenToUse,
        result,
        exit_code: 0,
      }),
    )
  return { session, jobs, sendResult, next }
})
