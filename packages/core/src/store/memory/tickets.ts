import { Effect, Option } from "effect"
import { LeaseLost } from "../../domain/lease.ts"
import { isTerminal, type TicketState } from "../../domain/ticket.ts"
import { StoreError } from "../StoreError.ts"
import {
  type CancelOutcome,
  cancelReasonOf,
  type Ticket,
  TicketStore,
  type TicketStoreService,
} from "../TicketStore.ts"
import type { MemoryState } from "./state.ts"

export const makeMemoryTickets = (memory: MemoryState): TicketStoreService => {
  const { peers, tickets, sessions, results, copy, oldestFirst, openSessionOf, holds } = memory
  /** The open session a ticket waits in, and who holds it. */
  const ownerOf = (t: { readonly sessionId: string | null }) => {
    const session = t.sessionId === null ? undefined : sessions.get(t.sessionId)
    if (t.sessionId === null || session === undefined || session.closed) return undefined
    return {
      sessionId: t.sessionId,
      ownerId: session.ownerId,
      epoch: session.epoch,
      expired: memory.lost(session),
      sealed: session.sealed,
    }
  }
  /** A new queued ticket with the next id; returns a copy. */
  const addTicket = (fields: Omit<Ticket, "ticket" | "state" | "attempts" | "deliveredAt">): Ticket => {
    const ticket = {
      ...fields,
      ticket: String(memory.nextTicket++),
      state: "queued" as TicketState,
      attempts: 0,
      deliveredAt: null,
      createdAt: Date.now(),
    }
    tickets.set(ticket.ticket, ticket)
    return copy(ticket)
  }

  /** Queued tickets of the peer that no open session carries (submitted as a login replaced it). */
  const strays = (peerId: string) =>
    [...tickets.values()].filter(
      (t) =>
        t.peerId === peerId &&
        t.state === "queued" &&
        (t.sessionId === null || sessions.get(t.sessionId)?.closed !== false),
    )

  /** Cancels tickets (see TicketStore.cancelTickets). */
  const cancel = (ids: ReadonlyArray<string>, by: string, reason: string) =>
    ids.map((id): CancelOutcome => {
      const t = tickets.get(id)
      if (t === undefined) return { ticket: id, outcome: "unknown" }
      if (isTerminal(t.state)) return { ticket: id, outcome: "closed", peerId: t.peerId, state: t.state }
      const owner = ownerOf(t)
      const why = cancelReasonOf(by, reason)
      if (t.state === "delivered" && owner !== undefined) {
        t.cancelReason = why
        return { ticket: id, outcome: "requested", peerId: t.peerId, owner }
      }
      t.state = "cancelled"
      t.closeReason = why
      t.finishedAt = Date.now()
      return { ticket: id, outcome: "cancelled", peerId: t.peerId, owner }
    })

  return TicketStore.of({
    createTickets: ({ peerId, sessionId, jobs }) =>
      Effect.sync(() =>
        jobs.map((job) =>
          addTicket({
            peerId,
            sessionId,
            jobId: job.job_id,
            name: job.name,
            os: job.os,
            distro: job.distro,
            command: job.command,
            timeoutMs: job.timeout_ms,
          }),
        ),
      ),
    submitTickets: ({ peerId, jobs }) =>
      Effect.suspend(() => {
        const peer = peers.get(peerId)
        if (peer === undefined) {
          return Effect.fail(
            new StoreError({
              operation: "submitTickets",
              message: `no peer ${peerId} has ever registered`,
              kind: "rejected",
            }),
          )
        }
        const owner = openSessionOf(peerId)
        const created = jobs.map((job) =>
          addTicket({
            peerId,
            sessionId: owner?.sessionId ?? null,
            jobId: null,
            name: job.name,
            os: peer.os ?? "",
            distro: peer.distro ?? "",
            command: job.command,
            timeoutMs: job.timeoutMs,
          }),
        )
        return Effect.succeed({ tickets: created, owner })
      }),
    queuedTickets: (sessionId, after) =>
      Effect.sync(() => {
        const session = sessions.get(sessionId)
        const adopted = new Set<string>()
        if (session && !session.closed)
          for (const t of strays(session.peerId)) {
            t.sessionId = sessionId
            adopted.add(t.ticket)
          }
        return [...tickets.values()]
          .filter(
            (t) =>
              t.sessionId === sessionId &&
              t.state === "queued" &&
              (after === undefined || adopted.has(t.ticket) || Number(t.ticket) > Number(after)),
          )
          .sort(oldestFirst)
          .map(copy)
      }),
    queuedCounts: (sessionIds) =>
      Effect.sync(() => {
        const wanted = new Set(sessionIds)
        const counts = new Map<string, number>()
        for (const t of tickets.values()) {
          if (t.state === "queued" && t.sessionId !== null && wanted.has(t.sessionId)) {
            counts.set(t.sessionId, (counts.get(t.sessionId) ?? 0) + 1)
          }
        }
        for (const sessionId of wanted) {
          const session = sessions.get(sessionId)
          const stray = session && !session.closed ? strays(session.peerId).length : 0
          if (stray > 0) counts.set(sessionId, (counts.get(sessionId) ?? 0) + stray)
        }
        return counts
      }),
    markDelivered: (lease, ids) =>
      Effect.suspend(() => {
        if (!holds(lease.sessionId, lease.epoch)) return Effect.fail(new LeaseLost(lease))
        const marked: Array<Ticket> = []
        for (const id of new Set(ids)) {
          const t = tickets.get(id)
          if (
            t === undefined ||
            isTerminal(t.state) ||
            t.state === "pending" ||
            t.sessionId !== lease.sessionId
          )
            continue
          t.state = "delivered"
          t.attempts++
          t.deliveredAt = Date.now()
          marked.push(copy(t))
        }
        return Effect.succeed(marked)
      }),
    expireTickets: ({ deliveryDeadlineMs, executionSlackMs }) =>
      Effect.sync(() => {
        const now = Date.now()
        let undeliverable = 0
        let timedOut = 0
        for (const t of tickets.values()) {
          // A run's tickets wait for their run's deadline instead (see sweepRuns).
          if (t.state === "queued" && t.runId == null && t.createdAt < now - deliveryDeadlineMs) {
            t.state = "undeliverable"
            undeliverable++
          } else if (
            t.state === "delivered" &&
            (t.deliveredAt ?? now) + 2 * t.timeoutMs + executionSlackMs < now &&
            (t.sessionId === null || sessions.get(t.sessionId)?.closed !== false)
          ) {
            t.state = "timed_out"
            timedOut++
          }
        }
        return { undeliverable, timedOut }
      }),
    closeTickets: (ids, state, reason, peerId) =>
      Effect.sync(() =>
        ids.filter((id) => {
          const t = tickets.get(id)
          if (!t || isTerminal(t.state) || (peerId !== undefined && t.peerId !== peerId)) return false
          t.state = state
          t.closeReason = reason ?? null
          return true
        }),
      ),
    ticketState: (ticket) => Effect.sync(() => Option.fromNullishOr(tickets.get(ticket)?.state)),
    cancelTickets: ({ tickets: ids, by, reason }) => Effect.sync(() => cancel([...new Set(ids)], by, reason)),
    cancelRun: ({ runId, by, reason }) =>
      Effect.sync(() => {
        if (!memory.runs.has(runId)) return Option.none()
        const open = [...tickets.values()]
          .filter((t) => t.runId === runId && !isTerminal(t.state))
          .sort(oldestFirst)
          .map((t) => t.ticket)
        return Option.some(cancel(open, by, reason))
      }),
    cancelRequests: (sessionId, ids) =>
      Effect.sync(() =>
        ids.flatMap((id) => {
          const t = tickets.get(id)
          if (t === undefined || t.sessionId !== sessionId) return []
          const closed = t.state === "cancelled" ? (t.closeReason ?? null) : null
          return [{ ticket: id, state: t.state, reason: t.cancelReason ?? closed }]
        }),
      ),
    ticketInfo: (ticket) =>
      Effect.sync(() => {
        const t = tickets.get(ticket)
        if (t === undefined) return Option.none()
        const r = results.get(ticket)
        return Option.some({
          ticket,
          peerId: t.peerId,
          name: t.name,
          state: t.state,
          closeReason: t.closeReason ?? null,
          cancelReason: t.cancelReason ?? null,
          result:
            r === undefined
              ? undefined
              : { status: r.status, exitCode: r.exitCode, output: r.output, truncated: r.truncated },
        })
      }),
  })
}
