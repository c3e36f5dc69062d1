import { Context, Effect, Layer } from "effect"
import { Store, type StoreError, type Ticket } from "../store/Store.ts"

export interface SchedulerOptions {
  /** How many tickets one peer may have in flight (sent, no result yet). */
  readonly maxInFlight: number
}

export interface PlanRequest {
  readonly peerId: string
  readonly sessionId: string
  readonly serverId: string
  readonly os: string | null
  readonly distro: string | null
}

/**
 * One session's tickets: a window of at most maxInFlight sent and unanswered, the rest waiting.
 * Owned by a single PeerSession actor, so plain mutable state is safe.
 */
export interface TicketQueue {
  /** The tickets to send now, as many as the window allows; they count as in flight from here. */
  readonly takeReady: () => ReadonlyArray<Ticket>
  /** Puts tickets that could not be sent back at the head of the queue. */
  readonly putBack: (tickets: ReadonlyArray<Ticket>) => void
  /** A ticket is answered: frees its place. Undefined when it was not in flight. */
  readonly settle: (ticket: string) => Ticket | undefined
  readonly inFlight: () => number
  readonly waiting: () => number
  /**
   * In-flight tickets past their deadline: sent at least `2 × timeout + slackMs` ago. The peer
   * enforces each job's timeout itself and always answers; this is the backstop for an answer that
   * was lost. (Twice the timeout, because a job may wait for a free slot on the peer first.)
   */
  readonly overdue: (now: number, slackMs: number) => ReadonlyArray<Ticket>
  /** How many times an in-flight ticket has been sent (1 after the first send). */
  readonly deliveries: (ticket: string) => number
  /** Records that an in-flight ticket was sent again now (its deadline starts over). */
  readonly resent: (ticket: string) => void
}

const makeTicketQueue = (tickets: ReadonlyArray<Ticket>, maxInFlight: number): TicketQueue => {
  const waiting = [...tickets]
  const inFlight = new Map<string, Ticket>()
  const sentAt = new Map<string, number>()
  const sends = new Map<string, number>()
  return {
    takeReady: () => {
      const ready = waiting.splice(0, Math.max(0, maxInFlight - inFlight.size))
      for (const t of ready) {
        inFlight.set(t.ticket, t)
        sentAt.set(t.ticket, Date.now())
        sends.set(t.ticket, 1)
      }
      return ready
    },
    putBack: (ts) => {
      for (const t of ts) inFlight.delete(t.ticket)
      waiting.unshift(...ts)
    },
    settle: (ticket) => {
      const t = inFlight.get(ticket)
      inFlight.delete(ticket)
      sentAt.delete(ticket)
      sends.delete(ticket)
      return t
    },
    deliveries: (ticket) => sends.get(ticket) ?? 0,
    resent: (ticket) => {
      if (!inFlight.has(ticket)) return
      sentAt.set(ticket, Date.now())
      sends.set(ticket, (sends.get(ticket) ?? 0) + 1)
    },
    overdue: (now, slackMs) =>
      [...inFlight.values()].filter((t) => (sentAt.get(t.ticket) ?? now) + 2 * t.timeoutMs + slackMs < now),
    inFlight: () => inFlight.size,
    waiting: () => waiting.length,
  }
}

/**
 * Picks the jobs for a peer (the catalog filtered by the peer's os and distro), creates their
 * tickets in the Store, and paces them per peer.
 */
export class JobScheduler extends Context.Service<
  JobScheduler,
  {
    readonly plan: (request: PlanRequest) => Effect.Effect<TicketQueue, StoreError>
  }
>()("@picus/core/JobScheduler") {
  static readonly layer = (options: SchedulerOptions): Layer.Layer<JobScheduler, never, Store> =>
    Layer.effect(
      JobScheduler,
      Effect.gen(function* () {
        const store = yield* Store
        return JobScheduler.of({
          plan: Effect.fnUntraced(function* (request: PlanRequest) {
            if (request.os === null || request.distro === null) {
              yield* Effect.logWarning("peer did not report its os and distro: no jobs match it")
              return makeTicketQueue([], options.maxInFlight)
            }
            const jobs = yield* store.jobsFor(request.os, request.distro)
            const tickets =
              jobs.length === 0
                ? []
                : yield* store.createTickets({
                    peerId: request.peerId,
                    sessionId: request.sessionId,
                    serverId: request.serverId,
                    jobs,
                  })
            return makeTicketQueue(tickets, options.maxInFlight)
          }),
        })
      }),
    )
}
