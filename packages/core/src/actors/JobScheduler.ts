import { Context, Effect, Layer } from "effect"
import { CatalogStore, type StoreError, type Ticket, TicketStore } from "../store/Store.ts"

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
  /** Open tickets the session took over from the peer's earlier sessions (see Store.login). */
  readonly adopted: ReadonlyArray<Ticket>
}

/**
 * One session's tickets: a window of at most maxInFlight sent and unanswered, the rest waiting.
 * Owned by a single PeerSession actor, so plain mutable state is safe.
 */
export interface TicketQueue {
  /** The tickets to send now, as many as the window allows; they count as in flight from here. */
  readonly takeReady: (now: number) => ReadonlyArray<Ticket>
  /** Puts tickets that could not be sent back at the head of the queue. */
  readonly putBack: (tickets: ReadonlyArray<Ticket>) => void
  /** Adds newly submitted tickets at the back; those it already has are skipped. Returns how many. */
  readonly add: (tickets: ReadonlyArray<Ticket>) => number
  /** A ticket is answered (or closed): frees its place. Undefined when it was not in flight. */
  readonly settle: (ticket: string) => Ticket | undefined
  readonly inFlight: () => number
  readonly waiting: () => number
  /** The in-flight tickets, to send again after the transport lost what it carried. */
  readonly inFlightTickets: () => ReadonlyArray<Ticket>
  /**
   * In-flight tickets past their deadline: sent at least `2 × timeout + slackMs` ago. The peer
   * enforces each job's timeout itself and always answers; this is the backstop for an answer that
   * was lost. (Twice the timeout, because a job may wait for a free slot on the peer first.)
   */
  readonly overdue: (now: number, slackMs: number) => ReadonlyArray<Ticket>
  /** When an in-flight ticket was last sent; undefined when it is not in flight. */
  readonly sentAt: (ticket: string) => number | undefined
  /** How many times an in-flight ticket has been sent, in all sessions (1 after the first send). */
  readonly deliveries: (ticket: string) => number
  /** Records that an in-flight ticket was sent again at `now` (its deadline starts over). */
  readonly resent: (ticket: string, now: number) => void
  /** The newest ticket it has had (ids come from one sequence): newer ones are news. */
  readonly newest: () => string | undefined
}

/** Ticket ids are numbers in text: the longer is newer, then the greater. */
const newerOf = (a: string | undefined, b: string): string =>
  a === undefined || b.length > a.length || (b.length === a.length && b > a) ? b : a

/**
 * A queue over open tickets. Delivered ones (`inFlight`) keep the time and count of their earlier
 * deliveries: a session taken over carries on with the deadlines its tickets already had.
 */
export const makeTicketQueue = (
  queued: ReadonlyArray<Ticket>,
  maxInFlight: number,
  inFlightAlready: ReadonlyArray<Ticket> = [],
): TicketQueue => {
  const waiting = [...queued]
  // Membership apart from the order, so a large backlog costs no scan per ticket added or settled.
  const waitingIds = new Set(queued.map((t) => t.ticket))
  let newest: string | undefined
  const saw = (ts: ReadonlyArray<Ticket>) => {
    for (const t of ts) newest = newerOf(newest, t.ticket)
  }
  saw(queued)
  saw(inFlightAlready)
  const inFlight = new Map<string, Ticket>()
  const sentAt = new Map<string, number>()
  const sends = new Map<string, number>()
  for (const t of inFlightAlready) {
    inFlight.set(t.ticket, t)
    sentAt.set(t.ticket, t.deliveredAt ?? Date.now())
    sends.set(t.ticket, Math.max(1, t.attempts))
  }
  const known = (ticket: string) => inFlight.has(ticket) || waitingIds.has(ticket)
  return {
    takeReady: (now) => {
      const ready = waiting.splice(0, Math.max(0, maxInFlight - inFlight.size))
      for (const t of ready) {
        waitingIds.delete(t.ticket)
        inFlight.set(t.ticket, t)
        sentAt.set(t.ticket, now)
        sends.set(t.ticket, (sends.get(t.ticket) ?? t.attempts) + 1)
      }
      return ready
    },
    putBack: (ts) => {
      for (const t of ts) {
        inFlight.delete(t.ticket)
        waitingIds.add(t.ticket)
      }
      waiting.unshift(...ts)
    },
    add: (ts) => {
      const fresh = ts.filter((t) => !known(t.ticket))
      for (const t of fresh) waitingIds.add(t.ticket)
      waiting.push(...fresh)
      saw(ts)
      return fresh.length
    },
    settle: (ticket) => {
      const t = inFlight.get(ticket)
      inFlight.delete(ticket)
      sentAt.delete(ticket)
      sends.delete(ticket)
      if (waitingIds.delete(ticket))
        waiting.splice(
          waiting.findIndex((w) => w.ticket === ticket),
          1,
        )
      return t
    },
    sentAt: (ticket) => sentAt.get(ticket),
    deliveries: (ticket) => sends.get(ticket) ?? 0,
    resent: (ticket, now) => {
      if (!inFlight.has(ticket)) return
      sentAt.set(ticket, now)
      sends.set(ticket, (sends.get(ticket) ?? 0) + 1)
    },
    overdue: (now, slackMs) =>
      [...inFlight.values()].filter((t) => (sentAt.get(t.ticket) ?? now) + 2 * t.timeoutMs + slackMs < now),
    inFlightTickets: () => [...inFlight.values()],
    inFlight: () => inFlight.size,
    waiting: () => waiting.length,
    newest: () => newest,
  }
}

/**
 * Picks the jobs for a peer (the catalog jobs of the peer's os and distro, and those marked `any`;
 * a peer that did not say its os or distro gets the `any` ones), creates their tickets in the
 * Store, and paces them per peer.
 */
export class JobScheduler extends Context.Service<
  JobScheduler,
  {
    /**
     * A new session's queue: the tickets it adopted first, then one new ticket per catalog job
     * that fits the peer (CatalogStore.jobsFor) and is not already among them.
     */
    readonly plan: (request: PlanRequest) => Effect.Effect<TicketQueue, StoreError>
    /** A taken-over session's queue, from its open tickets: delivered ones stay in flight. */
    readonly resume: (tickets: ReadonlyArray<Ticket>) => TicketQueue
  }
>()("@picus/core/JobScheduler") {
  static readonly layer = (
    options: SchedulerOptions,
  ): Layer.Layer<JobScheduler, never, CatalogStore | TicketStore> =>
    Layer.effect(
      JobScheduler,
      Effect.gen(function* () {
        const catalog = yield* CatalogStore
        const ticketStore = yield* TicketStore
        return JobScheduler.of({
          plan: Effect.fnUntraced(function* (request: PlanRequest) {
            const open = new Set(request.adopted.map((t) => t.jobId))
            const jobs = (yield* catalog.jobsFor(request.os, request.distro)).filter(
              (j) => !open.has(j.job_id),
            )
            if (
              jobs.length === 0 &&
              request.adopted.length === 0 &&
              (request.os === null || request.distro === null)
            ) {
              yield* Effect.logWarning(
                "peer did not report its os or distro, and no catalog job is marked any",
              )
            }
            const tickets =
              jobs.length === 0
                ? []
                : yield* ticketStore.createTickets({
                    peerId: request.peerId,
                    sessionId: request.sessionId,
                    serverId: request.serverId,
                    jobs,
                  })
            return makeTicketQueue([...request.adopted, ...tickets], options.maxInFlight)
          }),
          resume: (tickets) =>
            makeTicketQueue(
              tickets.filter((t) => t.state === "queued"),
              options.maxInFlight,
              tickets.filter((t) => t.state === "delivered"),
            ),
        })
      }),
    )
}
