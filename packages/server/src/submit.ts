import {
  Protocol,
  type StoreError,
  type SubmittedJob,
  type Ticket,
  TicketStore,
  Transport,
} from "@picus/core"
import { Effect, Result, Schema } from "effect"

/**
 * A submission the wire cannot carry (or the database hold): nothing was written. `field` is the
 * wire's name for it (`peer_id`, `name`, `command`, `timeout_ms`); `index` is the job's position.
 */
export class InvalidJob extends Schema.TaggedError<InvalidJob>()("InvalidJob", {
  field: Schema.String,
  index: Schema.optional(Schema.Int),
  message: Schema.String,
}) {}

/** What a submitted job becomes on the wire; os and distro are the peer's, checked at its login. */
const SubmittedSpec = Schema.Struct({
  name: Protocol.JobSpec.fields.name,
  command: Protocol.JobSpec.fields.command,
  timeout_ms: Protocol.TimeoutMs,
})
const decodeSpec = Schema.decodeUnknownResult(SubmittedSpec, { errors: "all" })
const decodePeerId = Schema.decodeUnknownResult(Protocol.Id)

const invalid = (error: Schema.SchemaError, prefix: string | undefined, index?: number) => {
  const issues = Protocol.describeSchemaIssues(error, prefix)
  const where = index === undefined ? "" : `job ${index}: `
  return new InvalidJob({
    field: issues[0]?.field ?? prefix ?? "",
    ...(index === undefined ? {} : { index }),
    message: `${where}${issues.map((issue) => issue.message).join("; ")}`,
  })
}

/** Fails with the first job (or the peer id) the wire could not carry. */
export const validateSubmission = (request: {
  readonly peerId: string
  readonly jobs: ReadonlyArray<SubmittedJob>
}): Effect.Effect<void, InvalidJob> =>
  Effect.suspend(() => {
    const peer = decodePeerId(request.peerId)
    if (Result.isFailure(peer)) return Effect.fail(invalid(peer.failure, "peer_id"))
    for (const [index, job] of request.jobs.entries()) {
      const spec = decodeSpec({ name: job.name, command: job.command, timeout_ms: job.timeoutMs })
      if (Result.isFailure(spec))
        return Effect.fail(invalid(spec.failure, undefined, request.jobs.length > 1 ? index : undefined))
    }
    return Effect.void
  })

export interface Submission {
  readonly tickets: ReadonlyArray<Ticket>
  /** The instance holding the peer's session, told that work is waiting; undefined while it is offline. */
  readonly ownerId: string | undefined
}

/**
 * Submits jobs to one peer: each is checked against the wire's limits first (an `InvalidJob`
 * writes nothing), then their tickets are written to PostgreSQL (that is the promise),
 * then the instance holding the peer's session is told to pick them up. The notice may be lost:
 * the holder also looks for waiting tickets on every keep-alive, and an offline peer gets them at
 * its next login.
 */
export const submitJobs = Effect.fnUntraced(function* (request: {
  readonly peerId: string
  readonly jobs: ReadonlyArray<SubmittedJob>
  /** Who submits (an instance id or a tool's name), recorded on the tickets. */
  readonly submittedBy: string
}): Effect.fn.Return<Submission, InvalidJob | StoreError, TicketStore | Transport> {
  yield* validateSubmission(request)
  const store = yield* TicketStore
  const transport = yield* Transport
  const { tickets, owner } = yield* store.submitTickets({
    peerId: request.peerId,
    serverId: request.submittedBy,
    jobs: request.jobs,
  })
  if (owner !== undefined && tickets.length > 0) {
    yield* transport
      .forward(
        owner.ownerId,
        Protocol.encodeServerNotice({ notice: "tickets_waiting", session_id: owner.sessionId }),
      )
      .pipe(Effect.ignore)
  }
  return { tickets, ownerId: owner?.ownerId }
})
