import {
  type CreatedRun,
  type NewRun,
  type NoMatchingPeers,
  Protocol,
  type RunAdvance,
  RunStore,
  type SessionOwner,
  type StoreError,
  Transport,
} from "@picus/core"
import { Effect, Result, Schema } from "effect"
import { InvalidJob } from "./submit.ts"

/** Tells each holder that work is waiting in a session of its own (lossy: the keep-alive looks too). */
export const notifyHolders = (owners: ReadonlyArray<SessionOwner>) =>
  Effect.gen(function* () {
    if (owners.length === 0) return
    const transport = yield* Transport
    yield* Effect.forEach(
      owners,
      (owner) =>
        transport
          .forward(
            owner.ownerId,
            Protocol.encodeServerNotice({ notice: "tickets_waiting", session_id: owner.sessionId }),
          )
          .pipe(Effect.ignore),
      { concurrency: "unbounded", discard: true },
    )
  })

const RunSpec = Schema.Struct({
  name: Protocol.JobSpec.fields.name,
  command: Protocol.JobSpec.fields.command,
  timeout_ms: Protocol.TimeoutMs,
})
const decodeSpec = Schema.decodeUnknownResult(RunSpec, { errors: "all" })
const decodeLabels = Schema.decodeUnknownResult(Protocol.Labels)
const decodeId = Schema.decodeUnknownResult(Protocol.Id)

/**
 * Starts a run: its command is checked against the wire's limits first (an `InvalidJob` writes
 * nothing), then the run and its tickets are written in one transaction, then the holders of the
 * queued tickets' sessions are told. Offline peers get theirs at their next login.
 */
export const startRun = Effect.fnUntraced(function* (
  run: NewRun,
): Effect.fn.Return<CreatedRun, InvalidJob | StoreError | NoMatchingPeers, RunStore | Transport> {
  const spec = decodeSpec({ name: run.name, command: run.command, timeout_ms: run.timeoutMs })
  if (Result.isFailure(spec)) {
    const issues = Protocol.describeSchemaIssues(spec.failure)
    return yield* new InvalidJob({
      field: issues[0]?.field ?? "",
      message: issues.map((issue) => `${issue.field}: ${issue.message}`).join("; "),
    })
  }
  for (const peerId of run.target.peers ?? []) {
    if (Result.isFailure(decodeId(peerId)))
      return yield* new InvalidJob({ field: "peer_id", message: `not a peer id: ${JSON.stringify(peerId)}` })
  }
  if (run.target.labels !== undefined && Result.isFailure(decodeLabels(run.target.labels))) {
    const failure = decodeLabels(run.target.labels)
    const issues = Result.isFailure(failure) ? Protocol.describeSchemaIssues(failure.failure, "labels") : []
    return yield* new InvalidJob({
      field: "labels",
      message: issues.map((issue) => `${issue.field}: ${issue.message}`).join("; "),
    })
  }
  const store = yield* RunStore
  const created = yield* store.createRun(run)
  yield* notifyHolders(created.owners)
  return created
})

/** Lets the runs go on after tickets of theirs ended, and tells the holders of what was let go. */
export const advanceRuns = (runIds: ReadonlyArray<string>) =>
  Effect.gen(function* () {
    if (runIds.length === 0) return
    const store = yield* RunStore
    const advanced = yield* store.advanceRuns(runIds)
    yield* notifyHolders(advanced.owners)
  })

const told = (advanced: RunAdvance) =>
  advanced.cancelled + advanced.undeliverable > 0
    ? Effect.logWarning(
        `runs: ${advanced.cancelled} ticket(s) cancelled (max errors), ${advanced.undeliverable} undeliverable (deadline)`,
      )
    : Effect.void

/**
 * The periodic sweep of the runs, safe on every instance: deadlines, and any advance missed (a
 * ticket ended by a session's end or a deadline rather than a result, an instance that died between
 * a result and its advance).
 */
export const sweepRuns = Effect.gen(function* () {
  const store = yield* RunStore
  const advanced = yield* store.sweepRuns()
  yield* notifyHolders(advanced.owners)
  yield* told(advanced)
})
