/**
 * Every metric the servers keep, in one place (as keys.ts holds every Redis key), in Effect's
 * default registry; `GET /metrics` shows them in the Prometheus format. Counters count what this
 * instance saw since it started; gauges are set when they are read.
 */
import { Metric } from "effect"

const counter = (name: string, description: string) =>
  Metric.counter(name, { description, incremental: true })

/** Registrations answered, by outcome (accepted, rejected) and reason (for a refusal). */
export const registrationsTotal = counter("picus_registrations_total", "Registrations answered")

/** Sessions ended by this instance, by reason (peer_shutdown, timeout, server_shutdown, ...). */
export const logoutsTotal = counter("picus_logouts_total", "Sessions logged out, by reason")

/** Results committed to PostgreSQL. */
export const resultsRecordedTotal = counter("picus_results_recorded_total", "Results committed to PostgreSQL")

/**
 * Ticket transitions this instance made, by the state entered: delivered, the states results lead
 * to (succeeded, failed, timed_out, cancelled), and the deadlines its sweeps ended (undeliverable,
 * timed_out).
 */
export const ticketsTotal = counter("picus_tickets_total", "Ticket transitions, by the state entered")

export const sessionsOpen = Metric.gauge("picus_sessions_open", {
  description: "Sessions this instance holds",
})
export const uplinkLagSeconds = Metric.gauge("picus_uplink_lag_seconds", {
  description: "How far behind the newest uplink entry this instance's last read was",
})
export const uplinkPending = Metric.gauge("picus_uplink_pending", {
  description: "Uplink entries in hand to be tried again",
})
export const deadLetters = Metric.gauge("picus_dead_letters", {
  description: "Uplink entries set aside as unhandleable (all instances)",
})

/** Seconds, from 1 ms to about 65 s. */
const latencyBoundaries = Metric.exponentialBoundaries({ start: 0.001, factor: 2, count: 17 })

/** A ticket first handed to the transport, counted from its creation. */
export const ticketSentSeconds = Metric.histogram("picus_ticket_sent_seconds", {
  description: "From a ticket's creation to its first sending",
  boundaries: latencyBoundaries,
})

/** A ticket's result committed, counted from when it was handed to the transport. */
export const ticketResultSeconds = Metric.histogram("picus_ticket_result_seconds", {
  description: "From a ticket's sending to its result committed",
  boundaries: latencyBoundaries,
})

/** A PostgreSQL statement, from slonik's taking it to its answer. */
export const pgStatementSeconds = Metric.histogram("picus_pg_statement_seconds", {
  description: "PostgreSQL statement time",
  boundaries: latencyBoundaries,
})

/** Rows pruned for retention, by table. */
export const prunedRowsTotal = counter("picus_pruned_rows_total", "Rows removed by retention, by table")
