import { Deferred, Effect, Exit, Queue, type Scope } from "effect"
import * as Protocol from "../protocol/index.ts"
import { hashSecret, sameHash } from "../secrets.ts"
import { type RecordOutcome, type ResultStatus, Store, type StoreError, type Ticket } from "../store/Store.ts"
import { Transport, type TransportError } from "../transport/Transport.ts"
import { JobScheduler, type TicketQueue } from "./JobScheduler.ts"

export interface SessionConfig {
  readonly serverId: string
  /** How often the peer should send a heartbeat (told to it in the accepted message). */
  readonly heartbeatMs: number
  /** No message from the peer for this long: it is logged out with reason `timeout`. */
  readonly graceMs: number
  /** Added to a ticket's deadline (see TicketQueue.overdue) before it is marked timed_out. */
  readonly deadlineSlackMs: number
  /**
   * How many times a ticket is sent before it is given up as timed_out (default 2: one more try).
   * A job message Redis lost gets run on the second send; if it was the answer that was lost, the
   * peer, which never runs a ticket twice, answers "not run again" and the ticket ends failed.
   */
  readonly maxDeliveries?: number
  /**
   * False while the server itself cannot hear anyone (its transport is down): silence then says
   * nothing about the peer, so no session times out. Absent: always true.
   */
  readonly canHearPeers?: () => boolean
}

export interface SessionStart {
  readonly peerId: string
  readonly sessionId: string
  /** The session secret, sent once in the accepted message; only its hash is kept. */
  readonly sessionToken: string
  readonly serverIp: string | null
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agentVersion: string | null
}

/** What became of a result message. */
export type ResultVerdict = RecordOutcome | "bad_token"

/**
 * The actor for one logged-in peer. Its mailbox serialises everything that touches the session:
 * the peer's results and heartbeats, the operator's shutdown, the watchdog's ticks. It writes the
 * login on start and exactly one logout at its end.
 */
export interface PeerSession {
  readonly peerId: string
  readonly sessionId: string
  /** Constant-time check of a message's token against the session token. */
  readonly authenticate: (token: string) => boolean
  /** Records a result; completes once it is durable (or refused). */
  readonly result: (message: Protocol.Result) => Effect.Effect<ResultVerdict, StoreError>
  readonly heartbeat: Effect.Effect<void>
  /** Sends the peer `shutdown` with the reason; the session stays open to take in-flight results. */
  readonly notifyShutdown: (reason: string) => Effect.Effect<void, TransportError>
  /** Ends the session: logout row with the reason, open tickets cancelled. Idempotent. */
  readonly end: (reason: string) => Effect.Effect<void, StoreError>
  readonly inFlight: Effect.Effect<number>
  /** Completes when the session has ended. */
  readonly ended: Effect.Effect<void>
}

type Command =
  | {
      readonly _tag: "Result"
      readonly message: Protocol.Result
      readonly reply: Deferred.Deferred<ResultVerdict, StoreError>
    }
  | { readonly _tag: "Heartbeat" }
  | {
      readonly _tag: "Shutdown"
      readonly reason: string
      readonly reply: Deferred.Deferred<void, TransportError>
    }
  | { readonly _tag: "End"; readonly reason: string; readonly reply: Deferred.Deferred<void, StoreError> }
  | { readonly _tag: "Tick" }
  | { readonly _tag: "InFlight"; readonly reply: Deferred.Deferred<number> }

/** A seed peer reports only the output: judge by the exit code when there is one. */
const statusOf = (message: Protocol.Result): ResultStatus =>
  message.status ?? (message.exit_code === undefined || message.exit_code === 0 ? "succeeded" : "failed")

/**
 * Starts a session: writes the login, tells the peer it is accepted (with its session token),
 * plans its tickets and sends the first window of jobs. The actor's fibers live in the given scope.
 */
export const startPeerSession = Effect.fnUntraced(function* (
  start: SessionStart,
  config: SessionConfig,
): Effect.fn.Return<
  PeerSession,
  StoreError | TransportError,
  Store | Transport | JobScheduler | Scope.Scope
> {
  const store = yield* Store
  const transport = yield* Transport
  const scheduler = yield* JobScheduler
  const { peerId, sessionId } = start
  const tokenHash = hashSecret(start.sessionToken)
  const annotate = Effect.annotateLogs({ peer_id: peerId, session_id: sessionId })
  const at = { server_id: config.serverId, peer_id: peerId }
  const publish = (event: Protocol.FeedEvent) => transport.publish(Protocol.encodeFeedEvent(event))

  yield* store.login({
    peerId,
    sessionId,
    serverId: config.serverId,
    serverIp: start.serverIp,
    os: start.os,
    distro: start.distro,
    hostname: start.hostname,
    agentVersion: start.agentVersion,
  })
  // Once the login is written, a start that fails half-way still closes the session it opened.
  const tickets: TicketQueue = yield* Effect.gen(function* () {
    yield* transport.sendToPeer(
      peerId,
      Protocol.encodeMessage({
        msg: "register",
        peer_id: peerId,
        token: start.sessionToken,
        status: "accepted",
        session_id: sessionId,
        server_id: config.serverId,
        heartbeat_ms: config.heartbeatMs,
      }),
    )
    return yield* scheduler.plan({
      peerId,
      sessionId,
      serverId: config.serverId,
      os: start.os,
      distro: start.distro,
    })
  }).pipe(
    Effect.tapError(() =>
      store
        .logout({ peerId, sessionId, reason: Protocol.LogoutReason.startFailed, serverId: config.serverId })
        .pipe(Effect.andThen(store.closeOpenTickets(sessionId, "cancelled")), Effect.ignore),
    ),
  )

  const mailbox = yield* Queue.unbounded<Command>()
  const ended = yield* Deferred.make<void>()
  let lastSeen = Date.now()
  let closed = false
  let shuttingDown = false

  /** Sends what the window allows; what fails to send waits for the next tick. */
  const jobMessage = (t: Ticket) =>
    Protocol.encodeMessage({
      msg: "job",
      ticket: t.ticket,
      peer_id: peerId,
      token: start.sessionToken,
      job: { name: t.name, os: t.os, distro: t.distro, command: t.command, timeout_ms: t.timeoutMs },
    })

  const dispatch = Effect.gen(function* () {
    if (shuttingDown) return
    const ready = tickets.takeReady()
    if (ready.length === 0) return
    const sent: Array<string> = []
    for (const [i, t] of ready.entries()) {
      const exit = yield* Effect.exit(transport.sendToPeer(peerId, jobMessage(t)))
      if (Exit.isFailure(exit)) {
        tickets.putBack(ready.slice(i))
        yield* Effect.logWarning("could not send jobs; will retry", exit.cause)
        break
      }
      sent.push(t.ticket)
      yield* publish({ event: "job_sent", at: Date.now(), ...at, ticket: t.ticket, name: t.name })
    }
    if (sent.length > 0) {
      yield* store.markDelivered(sent)
      yield* Effect.logDebug(`sent ${sent.length} job(s)`)
    }
  }).pipe(Effect.catch((e) => Effect.logWarning("could not mark jobs delivered", e)))

  /**
   * Tickets whose answer never came are sent once more; after the last try they end timed_out,
   * freeing their places for the next ones.
   */
  const expireOverdue = Effect.gen(function* () {
    const late = tickets.overdue(Date.now(), config.deadlineSlackMs)
    if (late.length === 0) return
    const maxDeliveries = config.maxDeliveries ?? 2
    const again = late.filter((t) => tickets.deliveries(t.ticket) < maxDeliveries)
    const givenUp = late.filter((t) => tickets.deliveries(t.ticket) >= maxDeliveries)
    for (const t of again) {
      yield* transport.sendToPeer(peerId, jobMessage(t))
      tickets.resent(t.ticket)
    }
    if (again.length > 0) {
      yield* store.markDelivered(again.map((t) => t.ticket))
      yield* Effect.logWarning(
        `no result in time for ticket(s) ${again.map((t) => t.ticket).join(", ")}: sent again`,
      )
    }
    if (givenUp.length === 0) return
    const closed = yield* store.closeTickets(
      givenUp.map((t) => t.ticket),
      "timed_out",
    )
    for (const t of givenUp) tickets.settle(t.ticket)
    yield* Effect.logWarning(`no result in time for ticket(s) ${closed.join(", ")}: timed out`)
  }).pipe(Effect.catch((e) => Effect.logWarning("could not time out overdue tickets", e)))

  const finish = Effect.fnUntraced(function* (reason: string) {
    if (closed) return
    yield* store.logout({ peerId, sessionId, reason, serverId: config.serverId })
    const cancelled = yield* store.closeOpenTickets(sessionId, "cancelled")
    closed = true
    yield* publish({ event: "logged_out", at: Date.now(), ...at, reason })
    yield* Effect.logInfo(
      `logged out (${reason})${cancelled > 0 ? `; ${cancelled} open ticket(s) cancelled` : ""}`,
    )
    yield* Deferred.succeed(ended, undefined)
  })

  const handle = (command: Command): Effect.Effect<void> => {
    switch (command._tag) {
      case "Result":
        return Effect.gen(function* () {
          lastSeen = Date.now()
          const m = command.message
          const verdict = yield* store.recordResult({
            ticket: m.ticket,
            peerId,
            sessionId,
            serverId: config.serverId,
            status: statusOf(m),
            exitCode: m.exit_code ?? null,
            output: m.result,
            truncated: m.truncated ?? false,
            startedAt: m.started_at ?? null,
            finishedAt: m.finished_at ?? null,
          })
          const ticket =
            verdict === "recorded" || verdict === "duplicate" ? tickets.settle(m.ticket) : undefined
          if (verdict === "recorded") {
            yield* publish({
              event: "result",
              at: Date.now(),
              ...at,
              ticket: m.ticket,
              name: ticket?.name ?? "?",
              status: statusOf(m),
              exit_code: m.exit_code ?? null,
              first_line: Protocol.firstLine(m.result),
            })
          } else {
            yield* Effect.logWarning(`result for ticket ${m.ticket} not recorded: ${verdict}`)
          }
          yield* dispatch
          return verdict
        }).pipe(
          Effect.exit,
          Effect.flatMap((exit) => Deferred.done(command.reply, exit)),
          Effect.asVoid,
        )
      case "Heartbeat":
        return Effect.sync(() => {
          lastSeen = Date.now()
        })
      case "Shutdown":
        return Effect.gen(function* () {
          shuttingDown = true
          yield* transport.sendToPeer(
            peerId,
            Protocol.encodeMessage({
              msg: "shutdown",
              token: start.sessionToken,
              reason: command.reason,
              server_id: config.serverId,
            }),
          )
        }).pipe(
          Effect.exit,
          Effect.flatMap((exit) => Deferred.done(command.reply, exit)),
          Effect.asVoid,
        )
      case "End":
        return finish(command.reason).pipe(
          Effect.exit,
          Effect.flatMap((exit) => Deferred.done(command.reply, exit)),
          Effect.asVoid,
        )
      case "Tick":
        // Once told to shut down, a peer stops heartbeating; the shutdown ends the session.
        return !shuttingDown && (config.canHearPeers?.() ?? true) && Date.now() - lastSeen > config.graceMs
          ? finish(Protocol.LogoutReason.timeout).pipe(
              Effect.catch((e) => Effect.logWarning("could not log out a silent peer", e)),
            )
          : expireOverdue.pipe(Effect.andThen(dispatch))
      case "InFlight":
        return Deferred.succeed(command.reply, tickets.inFlight()).pipe(Effect.asVoid)
    }
  }

  // The actor: one command at a time until the session has ended.
  yield* Effect.gen(function* () {
    while (!closed) yield* handle(yield* Queue.take(mailbox))
  }).pipe(annotate, Effect.forkScoped)
  yield* Queue.offer(mailbox, { _tag: "Tick" }).pipe(
    Effect.delay(Math.min(config.heartbeatMs, config.graceMs)),
    Effect.forever,
    Effect.raceFirst(Deferred.await(ended)),
    Effect.forkScoped,
  )

  yield* publish({
    event: "registered",
    at: Date.now(),
    ...at,
    session_id: sessionId,
    os: start.os,
    distro: start.distro,
    tickets: tickets.waiting(),
  })
  yield* dispatch.pipe(annotate)
  yield* Effect.logInfo(
    `logged in (${start.os ?? "?"}/${start.distro ?? "?"}, ${tickets.waiting() + tickets.inFlight()} ticket(s))`,
  ).pipe(annotate)

  /** Asks the actor; if it has ended, answers without it. */
  const ask = <A, E>(make: (reply: Deferred.Deferred<A, E>) => Command, whenEnded: Effect.Effect<A, E>) =>
    Effect.gen(function* () {
      if (closed) return yield* whenEnded
      const reply = yield* Deferred.make<A, E>()
      yield* Queue.offer(mailbox, make(reply))
      return yield* Deferred.await(reply).pipe(
        Effect.raceFirst(Deferred.await(ended).pipe(Effect.andThen(whenEnded))),
      )
    })

  return {
    peerId,
    sessionId,
    authenticate: (token) => sameHash(hashSecret(token), tokenHash),
    result: (message) =>
      ask<ResultVerdict, StoreError>(
        (reply) => ({ _tag: "Result", message, reply }),
        Effect.succeed("ticket_closed"),
      ),
    heartbeat: Queue.offer(mailbox, { _tag: "Heartbeat" }).pipe(Effect.asVoid),
    notifyShutdown: (reason) =>
      ask<void, TransportError>((reply) => ({ _tag: "Shutdown", reason, reply }), Effect.void),
    end: (reason) => ask<void, StoreError>((reply) => ({ _tag: "End", reason, reply }), Effect.void),
    inFlight: ask<number, never>((reply) => ({ _tag: "InFlight", reply }), Effect.succeed(0)),
    ended: Deferred.await(ended),
  }
})
