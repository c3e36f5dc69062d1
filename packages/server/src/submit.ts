import { Protocol, Store, type StoreError, type SubmittedJob, type Ticket, Transport } from "@picus/core"
import { Effect } from "effect"

export interface Submission {
  readonly tickets: ReadonlyArray<Ticket>
  /** The instance holding the peer's session, told that work is waiting; undefined while it is offline. */
  readonly ownerId: string | undefined
}

/**
 * Submits jobs to one peer: their tickets are written to PostgreSQL first (that is the promise),
 * then the instance holding the peer's session is told to pick them up. The notice may be lost:
 * the holder also looks for waiting tickets on every keep-alive, and an offline peer gets them at
 * its next login.
 */
export const submitJobs = Effect.fnUntraced(function* (request: {
  readonly peerId: string
  readonly jobs: ReadonlyArray<SubmittedJob>
  /** Who submits (an instance id or a tool's name), recorded on the tickets. */
  readonly submittedBy: string
}): Effect.fn.Return<Submission, StoreError, Store | Transport> {
  const store = yield* Store
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
        Protocol.encodeServerNotice({
          notice: "tickets_waiting",
          session_id: owner.sessionId,
          tickets: tickets.map((t) => ({
            ticket: t.ticket,
            job: { name: t.name, os: t.os, distro: t.distro, command: t.command, timeout_ms: t.timeoutMs },
          })),
        }),
      )
      .pipe(Effect.ignore)
  }
  return { tickets, ownerId: owner?.ownerId }
})
