import {
  Cause,
  Clock,
  Deferred,
  Effect,
  Exit,
  Metric,
  Option,
  Queue,
  Result,
  Schema,
  type Scope,
} from "effect"
import { isTerminal, ticketStateOf } from "../domain/ticket.ts"
import * as Metrics from "../metrics.ts"
import * as Protocol from "../protocol/index.ts"
import { hashSecret, sameHash, sessionTokenOf } from "../secrets.ts"
import {
  LeaseLost,
  type NewResult,
  type RecordOutcome,
  type ResultStatus,
  Store,
  StoreError,
  type TakenSession,
  type Ticket,
} from "../store/Store.ts"
import { Transport, type TransportError } from "../transport/Transport.ts"
import { checkMac, serverToPeerKey } from "../trust/mac.ts"
import { JobScheduler, type TicketQueue } from "./JobScheduler.ts"
import { makeTickWheel, type TickWheel } from "./TickWheel.ts"

export interface SessionConfig {
  readonly serverId: string
  /** How often the peer should send a heartbeat (told to it in the accepted message). */
  readonly heartbeatMs: number
  /** No message from the peer for this long: it is logged out with reason `timeout`. */
  readonly graceMs: number
  /** Added to a ticket's deadline (see TicketQueue.overdue) before it is marked timed_out. */
  readonly deadlineSlackMs: number
  /** How long a session's lease holds without renewal (the owner renews it; see Gateway). */
  readonly leaseMs: number
  /** The cluster's session key: session tokens are derived from it (see sessionTokenOf). */
  readonly sessionKey: Uint8Array
  /**
   * How many times a ticket is sent before it is given up as timed_out (default 2: one more try).
   * A job message Redis lost gets run on the second send; if it was the answer that was lost, the
   * peer, which never runs a ticket twice, answers with the result it kept (or "not run again").
   */
  readonly maxDeliveries?: number
  /**
   * False while the server itself cannot hear anyone (its transport is down): silence then says
   * nothing about the peer, so no session times out. Absent: always true.
   */
  readonly canHearPeers?: (now: number) => boolean
  /** Commands the session's mailbox holds before it refuses more (MailboxFull). Default 1024. */
  readonly mailboxCapacity?: number
  /** How long a caller waits for the session's answer before giving up (AskTimeout). Default 30 s. */
  readonly askTimeoutMs?: number
  /** The cluster's public key, told in every acceptance (the peer checks it against the one it pinned). */
  readonly clusterKey?: string
  /** The previous cluster key's endorsement of `clusterKey`, told in acceptances after a rotation. */
  readonly keyEndorsement?: string
  /**
   * Checks turned off, only ever by tests, to show what each one stops. `mac`: a sealed session
   * takes its peer's messages without checking their MAC.
   */
  readonly weakened?: { readonly mac?: boolean }
  /**
   * The wheel that ticks the session's watchdog, shared by the sessions of an instance; its period
   * must be min(heartbeatMs, graceMs). Absent: the session keeps a wheel of its own.
   */
  readonly ticks?: TickWheel
}

/**
 * Whether a peer's message speaks for a session. An unsealed session's messages carry its secret
 * token (compared in constant time). A sealed session's carry its id, which is no secret, and a MAC
 * under the token over the whole payload: whoever reads Redis sees the id and the MACs, never the
 * token, and cannot speak for the peer.
 */
export const sessionAuthenticator = (
  session: { readonly sessionId: string; readonly token: string; readonly sealed: boolean },
  options: { readonly checkMac?: boolean } = {},
): ((token: string, payload: string) => boolean) => {
  if (!session.sealed) {
    const tokenHash = hashSecret(session.token)
    return (token) => sameHash(hashSecret(token), tokenHash)
  }
  const macs = options.checkMac ?? true
  return (token, payload) =>
    token === session.sessionId && (!macs || checkMac(payload, session.token) === "valid")
}

/** The session's mailbox is full: the caller should retry later (the peer is flooding it, or it is stuck). */
export class MailboxFull extends Schema.TaggedError<MailboxFull>()("MailboxFull", {
  sessionId: Schema.String,
}) {}

/** The session did not answer in time: it is stuck on a slow write; the caller retries later. */
export class AskTimeout extends Schema.TaggedError<AskTimeout>()("AskTimeout", {
  sessionId: Schema.String,
  command: Schema.String,
}) {}

/** A session could not take a command now; nothing was done, and the same command may be tried again. */
export type SessionBusy = MailboxFull | AskTimeout

export interface SessionStart {
  readonly peerId: string
  readonly sessionId: string
  readonly serverIp: string | null
  readonly os: string | null
  readonly distro: string | null
  readonly hostname: string | null
  readonly agentVersion: string | null
  /** The registration's labels, kept on the peer's row to target runs by. */
  readonly labels?: Readonly<Record<string, string>> | null
  /** The registration's nonce, echoed in the acceptance (which then goes to its reply stream). */
  readonly nonce?: string | null
  /** The enrollment token it registered with, if one of the database's (revoking it ends the session). */
  readonly tokenId?: number | null
  /**
   * For a registration with a `box_key`: the session token (and the peer's Redis login) sealed to
   * it, for the acceptance. The session is then a sealed one (see sessionAuthenticator).
   */
  readonly sealed?: string
}

/** What became of a result message. */
export type ResultVerdict = RecordOutcome | "bad_token"

/**
 * The actor for one logged-in peer, on the instance that holds the session's lease. Its mailbox
 * serialises everything that touches the session: the peer's results and heartbeats, the
 * operator's shutdown, new tickets, the watchdog's ticks. Every write names the lease's epoch; when
 * one is refused (the session moved on without this instance), the actor stops without writing.
 */
export interface PeerSession {
  readonly peerId: string
  readonly sessionId: string
  readonly epoch: number
  /** When this instance started serving it (its login, or its takeover). */
  readonly openedAt: number
  /** Whether a message (its token, and its raw payload for the MAC) speaks for this session. */
  readonly authenticate: (token: string, payload: string) => boolean
  /**
   * Records a result; completes once it is durable (or refused). Fails with LeaseLost when this
   * instance no longer holds the session: the message belongs to whoever does now.
   */
  readonly result: (
    message: Protocol.Result,
  ) => Effect.Effect<ResultVerdict, StoreError | LeaseLost | SessionBusy>
  /** The row a result message becomes, at this session's epoch (for Store.recordResults). */
  readonly toRecord: (message: Protocol.Result) => NewResult
  /** Results the gateway recorded for this session in a batch: settles them and sends what is next. */
  readonly settled: (
    outcomes: ReadonlyArray<{ readonly message: Protocol.Result; readonly verdict: RecordOutcome }>,
  ) => Effect.Effect<void>
  readonly heartbeat: Effect.Effect<void>
  /** Sends the peer `shutdown` with the reason; the session stays open to take in-flight results. */
  readonly notifyShutdown: (reason: string) => Effect.Effect<void, TransportError | SessionBusy>
  /** Ends the session: logout row with the reason; its open tickets wait for the peer's next one. */
  readonly end: (reason: string) => Effect.Effect<void, StoreError | SessionBusy>
  /**
   * Stops acting for the session without writing anything: it was closed or taken elsewhere.
   * Returns once the actor has stopped, or after the ask timeout if it is stuck.
   */
  readonly release: Effect.Effect<void>
  /**
   * Picks up tickets submitted for the session: those given, or else those queued in the Store
   * (unless `queued`, the Store's count, says none are new).
   */
  readonly refill: (queued?: number, given?: ReadonlyArray<Ticket>) => Effect.Effect<void>
  /**
   * Tickets of the session were cancelled (a notice names them, and only wakes the session): it
   * reads them from the Store, drops the closed ones it has not sent, and asks the peer to stop
   * the delivered ones PostgreSQL says are to be cancelled.
   */
  readonly cancelRequested: (tickets: ReadonlyArray<string>) => Effect.Effect<void>
  /**
   * Relays a chunk of a running job's output to the feed, never to PostgreSQL, within the
   * session's bound (chunks and bytes a second); beyond it, chunks are dropped and counted.
   */
  readonly relayOutput: (message: Protocol.Output) => Effect.Effect<void>
  /** Sends the in-flight tickets again: the transport may have lost them (Redis came back empty). */
  readonly resendInFlight: Effect.Effect<void>
  readonly inFlight: Effect.Effect<number, SessionBusy>
  /** Completes when the session has ended (or was released, or failed). */
  readonly ended: Effect.Effect<void>
}

type Command =
  | {
      readonly _tag: "Result"
      readonly message: Protocol.Result
      readonly reply: Deferred.Deferred<ResultVerdict, StoreError | LeaseLost>
    }
  | {
      readonly _tag: "Settled"
      readonly outcomes: ReadonlyArray<{ readonly message: Protocol.Result; readonly verdict: RecordOutcome }>
    }
  | {
      readonly _tag: "Shutdown"
      readonly reason: string
      readonly reply: Deferred.Deferred<void, TransportError>
    }
  | { readonly _tag: "End"; readonly reason: string; readonly reply: Deferred.Deferred<void, StoreError> }
  | { readonly _tag: "Release" }
  | {
      readonly _tag: "Refill"
      readonly queued: number | undefined
      readonly given: ReadonlyArray<Ticket> | undefined
    }
  | { readonly _tag: "Resend" }
  | { readonly _tag: "Cancel"; readonly tickets: ReadonlyArray<string> }
  | { readonly _tag: "Tick" }
  | { readonly _tag: "InFlight"; readonly reply: Deferred.Deferred<number> }

/** A seed peer reports only the output: judge by the exit code when there is one. */
const statusOf = (message: Protocol.Result): ResultStatus =>
  message.status ?? (message.exit_code === undefined || message.exit_code === 0 ? "succeeded" : "failed")

/**
 * Starts a new session: writes the login (which hands it the peer's open tickets), tells the peer
 * it is accepted (with its session token), plans the catalog jobs and sends the first window. The
 * actor's fibers live in the given scope.
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
  // Before the peer can hear it is accepted: a registration it sends after that is never taken
  // for a copy of the one this session answers (see Registration).
  const openedAt = yield* Clock.currentTimeMillis
  const token = sessionTokenOf(config.sessionKey, sessionId)
  // Sealed: the token reaches the peer only sealed to its box key; the acceptance names the
  // session by its id.
  const sealed = start.sealed

  const { epoch, adopted } = yield* store.login({
    peerId,
    sessionId,
    serverId: config.serverId,
    serverIp: start.serverIp,
    os: start.os,
    distro: start.distro,
    hostname: start.hostname,
    agentVersion: start.agentVersion,
    labels: start.labels ?? null,
    tokenId: start.tokenId ?? null,
    leaseMs: config.leaseMs,
    sealed: sealed !== undefined,
  })
  // Once the login is written, a start that fails half-way still closes the session it opened.
  // The bunch of jobs is planned before the peer hears it is accepted: once it is told, its
  // session and its tickets exist in PostgreSQL.
  const tickets: TicketQueue = yield* Effect.gen(function* () {
    const planned = yield* scheduler.plan({
      peerId,
      sessionId,
      serverId: config.serverId,
      os: start.os,
      distro: start.distro,
      adopted,
    })
    const accepted = Protocol.encodeMessage({
      msg: "register",
      peer_id: peerId,
      token: sealed === undefined ? token : sessionId,
      status: "accepted",
      session_id: sessionId,
      server_id: config.serverId,
      heartbeat_ms: config.heartbeatMs,
      ...(start.nonce ? { nonce: start.nonce } : {}),
      ...(sealed === undefined ? {} : { sealed }),
      ...(config.clusterKey === undefined ? {} : { cluster_key: config.clusterKey }),
      ...(config.keyEndorsement === undefined ? {} : { key_endorsement: config.keyEndorsement }),
    })
    // A registration with a nonce is answered in its own reply stream (an enrolling peer can read
    // nothing else); a seed peer's, in its inbox.
    yield* start.nonce
      ? transport.sendReply(start.nonce, accepted)
      : transport.sendToPeer(peerId, accepted, { lifetime: "session" })
    return planned
  }).pipe(
    Effect.tapError(() =>
      store
        .logout({
          peerId,
          sessionId,
          epoch,
          reason: Protocol.LogoutReason.startFailed,
          serverId: config.serverId,
        })
        .pipe(Effect.ignore),
    ),
  )
  const session = yield* runSession(
    // A seed peer (no agent_version) never heartbeats: silence says nothing about it.
    {
      peerId,
      sessionId,
      epoch,
      token,
      sealed: sealed !== undefined,
      tickets,
      resumed: false,
      heartbeats: start.agentVersion !== null,
      openedAt,
    },
    config,
  )
  yield* Effect.logInfo(
    `logged in (${start.os ?? "?"}/${start.distro ?? "?"}, ${tickets.waiting() + tickets.inFlight()} ticket(s)` +
      `${adopted.length > 0 ? `, ${adopted.length} carried over from earlier sessions` : ""})`,
  ).pipe(Effect.annotateLogs({ peer_id: peerId, session_id: sessionId }))
  yield* transport.publish(() =>
    Protocol.encodeFeedEvent({
      event: "registered",
      at: Date.now(),
      server_id: config.serverId,
      peer_id: peerId,
      session_id: sessionId,
      os: start.os,
      distro: start.distro,
      tickets: tickets.waiting() + tickets.inFlight(),
    }),
  )
  return session
})

/**
 * Carries on a session taken over from a lost instance: same session, token and tickets; tickets
 * already delivered keep their deadlines. The peer notices nothing but a pause.
 */
export const resumePeerSession = Effect.fnUntraced(function* (
  taken: TakenSession,
  config: SessionConfig,
): Effect.fn.Return<PeerSession, never, Store | Transport | JobScheduler | Scope.Scope> {
  const scheduler = yield* JobScheduler
  const transport = yield* Transport
  const tickets = scheduler.resume(taken.tickets)
  const session = yield* runSession(
    {
      peerId: taken.peerId,
      sessionId: taken.sessionId,
      epoch: taken.epoch,
      token: sessionTokenOf(config.sessionKey, taken.sessionId),
      sealed: taken.sealed ?? false,
      tickets,
      resumed: true,
      heartbeats: taken.heartbeats ?? true,
    },
    config,
  )
  yield* Effect.logInfo(
    `took the session over from ${taken.fromServerId} (${tickets.inFlight()} ticket(s) in flight, ${tickets.waiting()} waiting)`,
  ).pipe(Effect.annotateLogs({ peer_id: taken.peerId, session_id: taken.sessionId }))
  yield* transport.publish(() =>
    Protocol.encodeFeedEvent({
      event: "taken_over",
      at: Date.now(),
      server_id: config.serverId,
      peer_id: taken.peerId,
      session_id: taken.sessionId,
      from_server_id: taken.fromServerId,
    }),
  )
  return session
})

interface Running {
  readonly peerId: string
  readonly sessionId: string
  readonly epoch: number
  readonly token: string
  /** Opened with a sealed acceptance (see sessionAuthenticator). */
  readonly sealed: boolean
  readonly tickets: TicketQueue
  /** Taken over from another instance (rather than opened by a login here). */
  readonly resumed: boolean
  /** The peer sends heartbeats, so its silence means it is gone (a seed peer's does not). */
  readonly heartbeats: boolean
  /** When the session started here; default: when its actor starts. */
  readonly openedAt?: number
}

const DEFAULT_MAILBOX_CAPACITY = 1024
const DEFAULT_ASK_TIMEOUT_MS = 30_000

/**
 * What a session relays of its peer's live output each second: a peer sends at most a few chunks a
 * second per job, so this is room for several jobs; a peer that floods is cut here, not the feed.
 */
export const OUTPUT_CHUNKS_PER_SECOND = 16
export const OUTPUT_BYTES_PER_SECOND = 64 * 1024

/** Why a ticket closed before its delivery was marked is told to the peer, in case it runs it. */
const CLOSED_BEFORE_DELIVERY = "the ticket was closed before its delivery was recorded"

/**
 * The actor itself, for a session this instance holds at `epoch`. It is supervised: a defect in it
 * is logged and ends this session alone (logout `server_error`; its open tickets wait for the peer's
 * next session), and whoever waits on it is answered.
 */
const runSession = Effect.fnUntraced(function* (
  running: Running,
  config: SessionConfig,
): Effect.fn.Return<PeerSession, never, Store | Transport | Scope.Scope> {
  const store = yield* Store
  const transport = yield* Transport
  const clock = yield* Clock.Clock
  const now = () => clock.currentTimeMillisUnsafe()
  const { peerId, sessionId, epoch, tickets } = running
  const lease = { sessionId, epoch }
  // What this session's messages to the peer carry: a sealed session's secret token never goes on
  // the wire again after its sealed acceptance, only its id.
  const token = running.sealed ? sessionId : running.token
  const authenticate = sessionAuthenticator(running, { checkMac: config.weakened?.mac !== true })
  const annotate = Effect.annotateLogs({ peer_id: peerId, session_id: sessionId })
  const at = { server_id: config.serverId, peer_id: peerId }
  const publish = (event: Protocol.FeedEvent) => transport.publish(() => Protocol.encodeFeedEvent(event))
  const askTimeoutMs = config.askTimeoutMs ?? DEFAULT_ASK_TIMEOUT_MS

  const openedAt = running.openedAt ?? now()
  // When the peer last heard from this session's holder. A session taken over starts at 0, so the
  // peer hears from its new holder at the first tick.
  let lastSentAt = running.resumed ? 0 : openedAt
  // A sealed session's messages are MACed under the key derived from its token, once (see
  // Transport's macKey); others signed.
  const authenticated = running.sealed ? { macKey: serverToPeerKey(running.token) } : {}
  const sendToPeer = (payload: string) =>
    transport.sendToPeer(peerId, payload, authenticated).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          lastSentAt = now()
        }),
      ),
    )
  const sendManyToPeer = (payloads: ReadonlyArray<string>) =>
    transport.sendManyToPeer(peerId, payloads, authenticated).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          lastSentAt = now()
        }),
      ),
    )
  /** The peer hears something at least every grace period, so it can tell a quiet server from a gone one. */
  const heartbeatPeer = Effect.suspend(() =>
    shuttingDown || now() - lastSentAt < config.graceMs
      ? Effect.void
      : sendToPeer(
          Protocol.encodeMessage({ msg: "heartbeat", peer_id: peerId, token, server_id: config.serverId }),
        ).pipe(Effect.catch((e) => Effect.logWarning("could not send the peer a heartbeat", e))),
  )
  // Bounded: what the peer drives (its results) is refused when it is full; the gateway
  // retries those entries later. Control commands wait for room (bounded by the ask timeout).
  const mailbox = yield* Queue.bounded<Command>(config.mailboxCapacity ?? DEFAULT_MAILBOX_CAPACITY)
  const ended = yield* Deferred.make<void>()
  let lastSeen = now()
  /** A read of new tickets is asked for and not yet begun (see `refill`). */
  let newsAsked = false
  let closed = false
  let shuttingDown = false

  /** The session moved on without this instance: stop, and write nothing more. */
  const lose = (why: string) =>
    Effect.gen(function* () {
      if (closed) return
      closed = true
      yield* Effect.logWarning(`no longer this instance's session: ${why}`)
      yield* Deferred.succeed(ended, undefined)
    })
  const orLose = <A, E>(effect: Effect.Effect<A, E | LeaseLost>) =>
    effect.pipe(
      Effect.catchIf(
        (e): e is LeaseLost => e instanceof LeaseLost,
        () => lose("closed or taken over elsewhere"),
      ),
    )

  /** The job message of a ticket; a ticket the wire cannot carry is an error, not a throw. */
  const jobMessage = (t: Ticket) =>
    Protocol.encodeMessageResult({
      msg: "job",
      ticket: t.ticket,
      peer_id: peerId,
      token,
      job: { name: t.name, os: t.os, distro: t.distro, command: t.command, timeout_ms: t.timeoutMs },
    })

  /** A ticket that cannot be sent ends failed with the reason: it never loops. */
  const unsendable = (t: Ticket, error: Protocol.ProtocolError) =>
    Effect.gen(function* () {
      tickets.settle(t.ticket)
      const reason = `cannot be sent: ${error.message}`
      yield* store.closeTickets([t.ticket], "failed", reason)
      yield* Effect.logError(`ticket ${t.ticket} failed: ${reason}`)
    })

  /** Asks the peer to stop these tickets' jobs (best effort: the request stays in PostgreSQL). */
  const stopOnPeer = (which: ReadonlyArray<readonly [string, string]>) =>
    which.length === 0
      ? Effect.void
      : sendManyToPeer(
          which.map(([ticket, reason]) =>
            Protocol.encodeMessage({ msg: "cancel", ticket, peer_id: peerId, token, reason }),
          ),
        ).pipe(Effect.catch((e) => Effect.logWarning("could not ask the peer to stop a job", e)))

  /** The session's output bound: chunks and bytes relayed in the current second, and what it dropped. */
  const outputBound = { second: -1, chunks: 0, bytes: 0, dropped: 0 }
  const relayOutput = (m: Protocol.Output) =>
    Effect.suspend(() => {
      const second = Math.floor(now() / 1000)
      if (second !== outputBound.second) {
        outputBound.second = second
        outputBound.chunks = 0
        outputBound.bytes = 0
      }
      const bytes = Buffer.byteLength(m.data)
      if (
        outputBound.chunks + 1 > OUTPUT_CHUNKS_PER_SECOND ||
        outputBound.bytes + bytes > OUTPUT_BYTES_PER_SECOND
      ) {
        outputBound.dropped += bytes + (m.dropped ?? 0)
        return Effect.void
      }
      outputBound.chunks++
      outputBound.bytes += bytes
      const dropped = (m.dropped ?? 0) + outputBound.dropped
      outputBound.dropped = 0
      return publish({
        event: "output",
        at: now(),
        ...at,
        ticket: m.ticket,
        seq: m.seq,
        stream: m.stream,
        data: m.data,
        ...(dropped > 0 ? { dropped } : {}),
      })
    })

  /** Sent, not yet marked delivered (PostgreSQL was away): marked with the next ones. */
  let unmarked: Array<Ticket> = []

  /**
   * Marks sent tickets delivered (fenced by the epoch, attempts + 1), with any left unmarked
   * before. One PostgreSQL no longer holds open for this session (answered already, or closed
   * meanwhile) leaves the window. PostgreSQL away: they are marked next time; the peer has them.
   */
  const mark = (sent: ReadonlyArray<Ticket>) =>
    Effect.gen(function* () {
      const all = unmarked.length === 0 ? sent : [...unmarked, ...sent]
      unmarked = []
      if (all.length === 0) return
      const marked = yield* store
        .markDelivered(
          lease,
          all.map((t) => t.ticket),
        )
        .pipe(
          Effect.catchIf(
            (e): e is StoreError => e instanceof StoreError,
            (e) =>
              Effect.sync(() => {
                unmarked = [...all]
              }).pipe(
                Effect.andThen(Effect.logWarning("could not mark jobs delivered; will retry", e)),
                Effect.as(undefined),
              ),
          ),
        )
      if (marked === undefined) return
      yield* Metric.update(Metric.withAttributes(Metrics.ticketsTotal, { state: "delivered" }), marked.length)
      const held = new Set(marked.map((t) => t.ticket))
      const gone = all.filter((t) => !held.has(t.ticket))
      for (const t of gone) tickets.settle(t.ticket)
      // Answered already, or cancelled meanwhile: a peer running it stops (one that finished it,
      // or does not know `cancel`, ignores this).
      if (gone.length > 0) yield* stopOnPeer(gone.map((t) => [t.ticket, CLOSED_BEFORE_DELIVERY] as const))
    })

  /**
   * Sends tickets, then marks them delivered. The send does not wait for PostgreSQL: the mark is
   * for deadlines, attempts and a successor's view of what is in flight, not for safety (a
   * ticket sent again, after a crash between the send and the mark, runs once: the peer keeps
   * what it started). One that fails to send is handed to `onSendFailure` with the rest.
   */
  const deliver = (
    ready: ReadonlyArray<Ticket>,
    onSent: (t: Ticket) => Effect.Effect<void>,
    onSendFailure: (
      rest: ReadonlyArray<Ticket>,
      cause: Cause.Cause<TransportError>,
    ) => Effect.Effect<void, TransportError>,
  ) =>
    Effect.gen(function* () {
      const toSend: Array<readonly [Ticket, string]> = []
      for (const t of ready) {
        const message = jobMessage(t)
        if (Result.isFailure(message)) yield* unsendable(t, message.failure)
        else toSend.push([t, message.success])
      }
      if (toSend.length === 0) return yield* mark([])
      // All in one round trip: a window's jobs do not wait for each other's replies.
      const exit = yield* Effect.exit(sendManyToPeer(toSend.map(([, message]) => message)))
      if (Exit.isFailure(exit)) {
        // Redis failing is retried; a defect is a bug, and fails the session (see crashed).
        if (Cause.hasDies(exit.cause)) return yield* Effect.failCause(exit.cause)
        return yield* onSendFailure(
          toSend.map(([t]) => t),
          exit.cause,
        )
      }
      for (const [t] of toSend) yield* onSent(t)
      yield* mark(toSend.map(([t]) => t))
    })

  /** Sends what the window allows; what fails to send goes back to wait for the next tick. */
  const dispatch = Effect.suspend(() => {
    if (shuttingDown || closed) return Effect.void
    const ready = tickets.takeReady(now())
    return deliver(
      ready,
      (t) =>
        Effect.andThen(
          t.attempts === 0 && t.createdAt !== undefined
            ? Metric.update(Metrics.ticketSentSeconds, Math.max(0, now() - t.createdAt) / 1000)
            : Effect.void,
          publish({ event: "job_sent", at: now(), ...at, ticket: t.ticket, name: t.name }),
        ),
      (rest, cause) =>
        Effect.sync(() => tickets.putBack(rest)).pipe(
          Effect.andThen(Effect.logWarning("could not send jobs; will retry", cause)),
        ),
    ).pipe(
      Effect.catchIf(
        (e): e is StoreError => e instanceof StoreError,
        // A ticket the wire cannot carry whose failure could not be written: the reconciler ends it.
        (e) => Effect.logWarning("could not close a ticket that cannot be sent", e),
      ),
    )
  }).pipe(
    orLose,
    Effect.catch((e) => Effect.logWarning("could not send jobs", e)),
  )

  /** Sends in-flight tickets again; the peer never runs one twice, so this only recovers losses. */
  const resend = (again: ReadonlyArray<Ticket>) =>
    deliver(
      again,
      (t) => Effect.sync(() => tickets.resent(t.ticket, now())),
      (_, cause) => Effect.failCause(cause),
    )

  /**
   * Tickets whose answer never came are sent once more; after the last try they end timed_out,
   * freeing their places for the next ones.
   */
  const expireOverdue = Effect.gen(function* () {
    const late = tickets.overdue(now(), config.deadlineSlackMs)
    if (late.length === 0) return
    const maxDeliveries = config.maxDeliveries ?? 2
    const again = late.filter((t) => tickets.deliveries(t.ticket) < maxDeliveries)
    const givenUp = late.filter((t) => tickets.deliveries(t.ticket) >= maxDeliveries)
    yield* resend(again)
    if (again.length > 0) {
      yield* Effect.logWarning(
        `no result in time for ticket(s) ${again.map((t) => t.ticket).join(", ")}: sent again`,
      )
    }
    if (givenUp.length === 0) return
    const timedOut = yield* store.closeTickets(
      givenUp.map((t) => t.ticket),
      "timed_out",
    )
    for (const t of givenUp) tickets.settle(t.ticket)
    yield* Effect.logWarning(`no result in time for ticket(s) ${timedOut.join(", ")}: timed out`)
  }).pipe(
    orLose,
    Effect.catch((e) => Effect.logWarning("could not time out overdue tickets", e)),
  )

  const finish = Effect.fnUntraced(function* (reason: string) {
    if (closed) return
    const wrote = yield* store.logout({ peerId, sessionId, epoch, reason, serverId: config.serverId })
    if (!wrote) return yield* lose("it was closed or taken over elsewhere before its logout")
    closed = true
    yield* Metric.update(Metric.withAttributes(Metrics.logoutsTotal, { reason }), 1)
    yield* publish({ event: "logged_out", at: now(), ...at, reason })
    const open = tickets.inFlight() + tickets.waiting()
    yield* Effect.logInfo(
      `logged out (${reason})${open > 0 ? `; ${open} open ticket(s) wait for its next session` : ""}`,
    )
    yield* Deferred.succeed(ended, undefined)
  })

  const toRecord = (m: Protocol.Result): NewResult => ({
    ticket: m.ticket,
    peerId,
    sessionId,
    epoch,
    serverId: config.serverId,
    status: statusOf(m),
    exitCode: m.exit_code ?? null,
    output: m.result,
    truncated: m.truncated ?? false,
    startedAt: m.started_at ?? null,
    finishedAt: m.finished_at ?? null,
  })

  /** A result is in PostgreSQL (or refused there): its ticket leaves the window. */
  const settle = (m: Protocol.Result, verdict: RecordOutcome) =>
    Effect.gen(function* () {
      lastSeen = now()
      const sent = tickets.sentAt(m.ticket)
      const ticket = verdict === "unknown_ticket" ? undefined : tickets.settle(m.ticket)
      if (verdict === "recorded") {
        yield* Metric.update(Metrics.resultsRecordedTotal, 1)
        yield* Metric.update(
          Metric.withAttributes(Metrics.ticketsTotal, { state: ticketStateOf(statusOf(m)) }),
          1,
        )
        if (sent !== undefined)
          yield* Metric.update(Metrics.ticketResultSeconds, Math.max(0, now() - sent) / 1000)
        yield* publish({
          event: "result",
          at: now(),
          ...at,
          ticket: m.ticket,
          name: ticket?.name ?? "?",
          status: statusOf(m),
          exit_code: m.exit_code ?? null,
          first_line: Protocol.firstLine(m.result),
        })
        if (m.status === "cancelled") {
          // Who and why are the cancel request's, kept in PostgreSQL.
          const info = yield* store.ticketInfo(m.ticket).pipe(Effect.orElseSucceed(() => Option.none()))
          const reason = (Option.isSome(info) ? info.value.closeReason : null) ?? "cancelled"
          yield* publish({ event: "cancelled", at: now(), ...at, ticket: m.ticket, reason })
        }
      } else {
        yield* Effect.logWarning(`result for ticket ${m.ticket} not recorded: ${verdict}`)
      }
    })

  /** Silence means the peer is gone only if it heartbeats, the server can hear, and it is not shutting down. */
  const silent = () =>
    running.heartbeats &&
    !shuttingDown &&
    (config.canHearPeers?.(now()) ?? true) &&
    now() - lastSeen > config.graceMs

  const handle = (command: Command): Effect.Effect<void> => {
    switch (command._tag) {
      case "Result":
        return Effect.gen(function* () {
          const verdict = yield* store.recordResult(toRecord(command.message))
          yield* settle(command.message, verdict)
          yield* dispatch
          return verdict
        }).pipe(
          Effect.tapError((e) => (e instanceof LeaseLost ? lose("a result was refused") : Effect.void)),
          Effect.exit,
          Effect.flatMap((exit) => Deferred.done(command.reply, exit)),
          Effect.asVoid,
        )
      case "Settled":
        return Effect.forEach(command.outcomes, ({ message, verdict }) => settle(message, verdict), {
          discard: true,
        }).pipe(Effect.andThen(dispatch))
      case "Shutdown":
        return Effect.gen(function* () {
          shuttingDown = true
          yield* sendToPeer(
            Protocol.encodeMessage({
              msg: "shutdown",
              token,
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
      case "Release":
        return lose("released")
      case "Refill":
        return Effect.gen(function* () {
          const news = command.queued === undefined && command.given === undefined
          if (news) newsAsked = false
          if (command.queued !== undefined && command.queued <= tickets.waiting()) return
          // News (a notice): only tickets newer than any it has. A keep-alive's count: all, which
          // also finds one whose submission committed after a newer one's notice was read.
          const read =
            command.given ?? (yield* store.queuedTickets(sessionId, news ? tickets.newest() : undefined))
          const added = tickets.add(read)
          if (added > 0) yield* Effect.logDebug(`${added} new ticket(s)`)
          yield* dispatch
        }).pipe(Effect.catch((e) => Effect.logWarning("could not pick up new tickets", e)))
      case "Cancel":
        return Effect.gen(function* () {
          const rows = yield* store.cancelRequests(sessionId, command.tickets)
          const stop: Array<readonly [string, string]> = []
          for (const row of rows) {
            if (isTerminal(row.state)) {
              // Closed before this session sent it: it is never sent. One sent whose delivery was
              // not marked yet may be running on the peer: it is asked to stop too.
              const wasInFlight = tickets.settle(row.ticket) !== undefined
              if (wasInFlight && row.state === "cancelled") stop.push([row.ticket, row.reason ?? "cancelled"])
            } else if (row.state === "delivered" && row.reason !== null) stop.push([row.ticket, row.reason])
          }
          yield* stopOnPeer(stop)
          if (stop.length > 0) yield* Effect.logInfo(`asked the peer to stop ${stop.length} job(s)`)
          yield* dispatch
        }).pipe(Effect.catch((e) => Effect.logWarning("could not pass cancels on to the peer", e)))
      case "Resend":
        return resend(tickets.inFlightTickets()).pipe(
          orLose,
          Effect.catch((e) => Effect.logWarning("could not send in-flight tickets again", e)),
        )
      case "Tick":
        // Once told to shut down, a peer stops heartbeating; the shutdown ends the session.
        return silent()
          ? finish(Protocol.LogoutReason.timeout).pipe(
              Effect.catch((e) => Effect.logWarning("could not log out a silent peer", e)),
            )
          : expireOverdue.pipe(Effect.andThen(dispatch), Effect.andThen(heartbeatPeer))
      case "InFlight":
        return Deferred.succeed(command.reply, tickets.inFlight()).pipe(Effect.asVoid)
    }
  }

  /** The actor failed: log it, close this session alone (best effort), and answer everyone waiting. */
  const crashed = (cause: Cause.Cause<unknown>) =>
    Effect.gen(function* () {
      yield* Effect.logError("session failed; logging it out as server_error", cause)
      yield* finish(Protocol.LogoutReason.serverError).pipe(
        Effect.catchCause((again) => Effect.logError("could not log out the failed session", again)),
      )
      closed = true
      yield* Deferred.succeed(ended, undefined)
    })

  // The actor: one command at a time until the session has ended.
  yield* Effect.gen(function* () {
    while (!closed) yield* handle(yield* Queue.take(mailbox))
  }).pipe(
    Effect.catchCause((cause) => (Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause) : crashed(cause))),
    annotate,
    Effect.forkScoped,
  )
  // A tick with nothing to do (no ticket, the peer heard from and recently told something) is not
  // sent: ten thousand idle sessions would wake their actors thousands of times a second for nothing.
  // It names what a Tick acts on (silence, overdue and waiting tickets, the server's heartbeat): work
  // added to the Tick must be named here too.
  const idle = () =>
    !silent() &&
    tickets.inFlight() === 0 &&
    tickets.waiting() === 0 &&
    (shuttingDown || now() - lastSentAt < config.graceMs)
  const wheel = config.ticks ?? (yield* makeTickWheel(Math.min(config.heartbeatMs, config.graceMs), 1))
  const stopTicks = wheel.register(() => {
    if (!closed && !idle()) Queue.offerUnsafe(mailbox, { _tag: "Tick" })
  })
  yield* Effect.addFinalizer(() => Effect.sync(stopTicks))
  yield* dispatch.pipe(
    Effect.catchCause((cause) => crashed(cause)),
    annotate,
  )

  /** Answers when the actor has ended, or waits in line for it; never longer than the ask timeout. */
  const ask = <A, E>(
    name: Command["_tag"],
    make: (reply: Deferred.Deferred<A, E>) => Command,
    whenEnded: Effect.Effect<A, E>,
  ): Effect.Effect<A, E | SessionBusy> =>
    Effect.gen(function* () {
      if (closed) return yield* whenEnded
      const reply = yield* Deferred.make<A, E>()
      const command = make(reply)
      // What the peer drives is refused when the mailbox is full; control commands wait for room.
      if (name === "Result") {
        if (!Queue.offerUnsafe(mailbox, command)) return yield* new MailboxFull({ sessionId })
      } else {
        yield* Queue.offer(mailbox, command)
      }
      return yield* Deferred.await(reply).pipe(
        Effect.raceFirst(Deferred.await(ended).pipe(Effect.andThen(whenEnded))),
      )
    }).pipe(
      Effect.timeoutOrElse({
        duration: askTimeoutMs,
        orElse: () => Effect.fail(new AskTimeout({ sessionId, command: name })),
      }),
    )
  /** Tells the actor, without waiting; dropped when the mailbox is full (a refill, say). */
  const tell = (command: Command) => Effect.sync(() => void Queue.offerUnsafe(mailbox, command))

  return {
    peerId,
    sessionId,
    epoch,
    openedAt,
    authenticate,
    // Once the actor is gone the result is someone else's to record (or no one's): say so, and the
    // gateway finds where it belongs.
    result: (message) =>
      ask<ResultVerdict, StoreError | LeaseLost>(
        "Result",
        (reply) => ({ _tag: "Result", message, reply }),
        Effect.fail(new LeaseLost(lease)),
      ),
    toRecord,
    settled: (outcomes) => tell({ _tag: "Settled", outcomes }),
    // Only the time it was last heard from, which the actor reads on its ticks: not worth a turn of it.
    heartbeat: Effect.sync(() => {
      lastSeen = now()
    }),
    notifyShutdown: (reason) =>
      ask<void, TransportError>("Shutdown", (reply) => ({ _tag: "Shutdown", reason, reply }), Effect.void),
    end: (reason) => ask<void, StoreError>("End", (reply) => ({ _tag: "End", reason, reply }), Effect.void),
    release: Effect.suspend(() =>
      closed ? Effect.void : Queue.offer(mailbox, { _tag: "Release" }).pipe(Effect.asVoid),
    ).pipe(
      Effect.andThen(Deferred.await(ended)),
      Effect.timeoutOrElse({
        duration: askTimeoutMs,
        orElse: () => Effect.logError("the session did not stop in time; it is let go"),
      }),
    ),
    refill: (queued, given) => {
      // Notices of one session coalesce: one read takes every ticket they announce.
      if (queued === undefined && given === undefined) {
        if (newsAsked) return Effect.void
        newsAsked = true
      }
      return tell({ _tag: "Refill", queued, given })
    },
    resendInFlight: tell({ _tag: "Resend" }),
    cancelRequested: (ids) => tell({ _tag: "Cancel", tickets: ids }),
    relayOutput,
    inFlight: ask<number, never>("InFlight", (reply) => ({ _tag: "InFlight", reply }), Effect.succeed(0)),
    ended: Deferred.await(ended),
  }
})
