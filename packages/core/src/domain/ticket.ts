import { Schema } from "effect"

/**
 * A ticket's life, on one page. A ticket is created `queued` (or `pending`, held back by its run's
 * rollout) and ends in exactly one terminal state:
 *
 *   pending ──promoted──▶ queued   a run's ticket let go by its rollout (max concurrency)
 *     ├──▶ cancelled       its run stopped (max errors exceeded)
 *     └──▶ undeliverable   its run's deadline passed first
 *   queued ──mark delivered──▶ delivered ──result──▶ succeeded | failed | timed_out
 *     │                          │  ▲ sent again (a lost job or answer)
 *     │                          └──┘
 *     ├──▶ undeliverable   not delivered by its delivery deadline (the reconciler)
 *     ├──▶ failed          the wire cannot carry it (never sent)
 *     └──▶ cancelled
 *   delivered ──▶ timed_out   no answer after the last try, or its session ended and none carried it on
 *   delivered ──▶ failed      its result was refused by the database (a dead letter), or cannot be sent
 *   delivered ──▶ cancelled   at once when no session carries it; else its peer kills the job and
 *                             reports `cancelled` (a result that came first keeps its real outcome)
 *
 * Terminal states never change again; a result for a closed ticket is told `ticket_closed`.
 */
export const TicketState = Schema.Literals([
  "pending",
  "queued",
  "delivered",
  "succeeded",
  "failed",
  "timed_out",
  "undeliverable",
  "cancelled",
])
export type TicketState = typeof TicketState.Type

export const OPEN_TICKET_STATES: ReadonlyArray<TicketState> = ["pending", "queued", "delivered"]
export const TERMINAL_TICKET_STATES: ReadonlyArray<TicketState> = [
  "succeeded",
  "failed",
  "timed_out",
  "undeliverable",
  "cancelled",
]

export const isTerminal = (state: TicketState): boolean => TERMINAL_TICKET_STATES.includes(state)

const transitions: Record<TicketState, ReadonlyArray<TicketState>> = {
  pending: ["queued", "cancelled", "undeliverable"],
  queued: ["delivered", "undeliverable", "failed", "cancelled"],
  delivered: ["delivered", "succeeded", "failed", "timed_out", "cancelled"],
  succeeded: [],
  failed: [],
  timed_out: [],
  undeliverable: [],
  cancelled: [],
}

/** Whether a ticket in state `from` may move to `to`. */
export const canMove = (from: TicketState, to: TicketState): boolean => transitions[from].includes(to)

/** How a job ended, as its peer reports it. */
export const ResultStatus = Schema.Literals(["succeeded", "failed", "timed_out", "refused", "cancelled"])
export type ResultStatus = typeof ResultStatus.Type

/** The terminal ticket state a result status leads to (a peer's refusal is a failure). */
export const ticketStateOf = (status: ResultStatus): TicketState =>
  status === "succeeded" || status === "timed_out" || status === "cancelled" ? status : "failed"
