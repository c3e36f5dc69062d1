import { randomUUID } from "node:crypto"
import {
  compareStreamIds,
  type Envelope,
  type InboxReader,
  jobFitsPeer,
  Protocol,
  Transport,
  TransportError,
  Trust,
} from "@picus/core"
import {
  Clock,
  Console,
  Context,
  Effect,
  Exit,
  Fiber,
  Layer,
  Random,
  Result,
  Schedule,
  Scope,
  Semaphore,
} from "effect"
import { type ExecuteOptions, type Execution, execute } from "./executor.ts"
import type { KeptResult } from "./journal.ts"
import { makeLiveOutput } from "./liveOutput.ts"
import type { OsInfo } from "./osInfo.ts"
import type { StateFile } from "./state.ts"
import {
  type ClusterKeyPin,
  checkAcceptance,
  checkServerMessage,
  FIRST_USE,
  makeRefusalLog,
  openSealed,
  resolveTrust,
  type Trusted,
} from "./trust.ts"

/** The session's own Redis user, delivered sealed in the acceptance. */
export interface SessionCredentials {
  readonly user: string
  readonly password: string
}

export interface AgentConfig {
  /** The enrollment token, sent with each registration. */
  readonly token: string
  /** The cluster key given by the operator (`--cluster-key`, or the enrollment string's). */
  readonly clusterKey?: ClusterKeyPin | undefined
  /** With no key given or pinned: pin the key of the first validly signed acceptance. */
  readonly trustOnFirstUse?: boolean
  /**
   * A transport that logs into Redis as the session's own user, for an acceptance that carries
   * one: the session's inbox and messages go through it, and it is closed when the session ends.
   * Without it (or without credentials in the acceptance) the agent's own transport serves sessions.
   */
  readonly sessionTransport?: (credentials: SessionCredentials) => Layer.Layer<Transport, TransportError>
  /**
   * Tests only: take server messages without checking their signatures, to show what the checks
   * stop. Default true; the peer program never turns it off.
   */
  readonly verifySignatures?: boolean
  /** Refused server messages are told at most once per kind per this long (default 10 s). */
  readonly refusalLogIntervalMs?: number
  /** Where refused server messages are told (default: a warning in the log). */
  readonly warn?: (line: string) => Effect.Effect<void>
  readonly serverIp: string
  readonly os: OsInfo
  /** Sent at registration (only when there are some: a seed server knows no labels). */
  readonly labels?: Readonly<Record<string, string>>
  readonly state: StateFile
  readonly agentVersion: string
  /** Jobs run at once. */
  readonly concurrency: number
  readonly outputCapBytes: number
  /** Used when a job has no timeout of its own. */
  readonly defaultTimeoutMs: number
  /** After a shutdown: exit (true) or wait and register again (false). */
  readonly exitOnShutdown: boolean
  /** Without an answer to a registration for this long, send it again. */
  readonly registerTimeoutMs: number
  /** Backoff before registering again after a shutdown: base, doubled per try, jittered, capped. */
  readonly reconnectBaseMs: number
  readonly reconnectMaxMs: number
  /**
   * Nothing from the server (no job, no heartbeat) for this long while logged in: its session is
   * gone with no one to say so, and the peer registers again (default 60 s). A server sends a
   * heartbeat at least every grace period, and a lost server's sessions are taken over within a
   * lease, so this only fires when no server is left to carry the session on.
   */
  readonly serverSilenceMs?: number
  /** Where the agent tells its person what happens (default: stdout). */
  readonly say?: (line: string) => Effect.Effect<void>
  /**
   * How often a running job's new output goes out as an `output` chunk (default 250 ms: at most
   * four a second per job); a job done sooner sends none, its result carries it all.
   */
  readonly liveOutputMs?: number
  /** How long a cancelled job has after SIGTERM before its process group is killed (default 2 s). */
  readonly killGraceMs?: number
}

/** Retries of Redis commands while Redis is away: quickly at first, then every 5 seconds. */
const redisBackoff = Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")])

/** How the agent stopped. */
export type AgentExit =
  | { readonly _tag: "Rejected"; readonly reason: string }
  | { readonly _tag: "Shutdown"; readonly reason: string }
  /** Refused for now (too many registrations at once, a stale `ts`): register again after a wait. */
  | { readonly _tag: "Retry"; readonly reason: string }

interface Session {
  /** The acceptance's `token`: the session's public name, quoted by every message of it. */
  readonly id: string
  /** The session token, unsealed: the key of the MAC on every message the peer sends in it. */
  readonly secret: string
  /** The key the server's messages of this session are MACed under, derived from `secret` once. */
  readonly serverKey: string
  readonly sessionId: string | undefined
  readonly heartbeatMs: number
  /** The acceptance's entry id: older inbox entries are news from before this session. */
  readonly acceptedAt: string
  readonly transport: Transport["Service"]
  readonly reader: InboxReader
  /** Holds the session's transport, inbox reader and heartbeat. */
  readonly scope: Scope.Closeable
}

/** The registration waiting for its answer. */
interface Registration {
  readonly nonce: string
  /** The signed register, sent again unchanged while unanswered. */
  readonly payload: string
  /** The private half of the registration's `box_key`, which opens the acceptance's sealed part. */
  readonly boxKey: Trust.BoxKeyPair
  readonly reader: InboxReader
  readonly scope: Scope.Closeable
  cursor: string
}

/** Redis refused the session's user: the session is over (the server drops its user then). */
const accessGone = (error: TransportError): boolean =>
  /\b(WRONGPASS|NOPERM|NOAUTH)\b/.test(
    `${error.message} ${error.cause instanceof Error ? error.cause.message : ""}`,
  )

const noSession = new TransportError({ operation: "send", message: "no session open" })

/**
 * A Redis command that never answers fails after this long. A connection whose user Redis stopped
 * accepting keeps reconnecting, and the command it had sent waits for it forever.
 */
const COMMAND_TIMEOUT_MS = 10_000

/**
 * The session's own connection without a good read for this long (or refused outright): the
 * session is over for Redis, and the peer registers again. A Redis outage this long costs a new
 * session, which replaces the old one.
 */
const SESSION_LINK_GRACE_MS = 5_000

/**
 * How long a read waits for news; a read that takes longer than this and a margin has hung. A
 * registration's answer is read in short blocks (its resend is due within registerTimeoutMs).
 */
const READ_BLOCK_MS = 1_000

/**
 * How long a session's inbox read waits for news: news wakes it at once, so this only sets how
 * often an idle peer wakes up with nothing to do (a wake-up each second was half its idle CPU). Cut
 * short when the server's silence is due to be noticed sooner.
 */
const IDLE_READ_BLOCK_MS = 10_000

/** Inbox entries read before they are trimmed (a trim per read was a round trip per job). */
const TRIM_EVERY = 32

const bounded = <A>(command: Effect.Effect<A, TransportError>, operation: string, ms = COMMAND_TIMEOUT_MS) =>
  command.pipe(
    Effect.timeoutOrElse({
      duration: ms,
      orElse: () =>
        Effect.fail(new TransportError({ operation, message: `no answer from Redis in ${ms / 1000}s` })),
    }),
  )

/** Attacker-chosen text in a log line: short. */
const shown = (text: string) => (text.length > 64 ? `${text.slice(0, 64)}…` : text)

/**
 * The peer's side of the protocol: register, run the jobs that arrive in its inbox, send each
 * result, heartbeat, and react to `shutdown`. One registration cycle at a time; after a shutdown
 * it registers again (with backoff) unless told to exit.
 *
 * Every server message must be signed by the cluster key the peer pinned; each registration is
 * signed by the peer's identity key and carries a fresh box key, and the acceptance seals the
 * session token (and the session's Redis user) to it. Every message of a session carries the
 * session id and a MAC under the session token.
 */
export const makeAgent = Effect.fnUntraced(function* (config: AgentConfig) {
  const transport = yield* Transport
  const peerId = config.state.peerId
  const journal = config.state.journal
  const say = config.say ?? ((line: string) => Console.log(line))
  const verify = config.verifySignatures ?? true
  const refusals = makeRefusalLog({
    intervalMs: config.refusalLogIntervalMs ?? 10_000,
    write: config.warn ?? ((line) => Effect.logWarning(line)),
  })
  const identity = Trust.signingKeyOf(config.state.identityKey)
  if (identity === undefined) return yield* Effect.die(new Error("the state file gave no identity key"))

  const resolved = resolveTrust({
    given: config.clusterKey,
    trustOnFirstUse: config.trustOnFirstUse ?? false,
    pinned: config.state.pinnedClusterKey(),
  })
  if (Result.isFailure(resolved)) return yield* resolved.failure
  let trusted: Trusted = resolved.success.trusted
  if (resolved.success.note !== undefined) yield* say(resolved.success.note)
  if (trusted._tag === "Pinned") {
    if (config.state.pinnedClusterKey()?.key !== trusted.key) {
      config.state.pinClusterKey({ key: trusted.key, from: trusted.from })
    }
    yield* say(`checking the server's messages against cluster key ${Trust.fingerprintOf(trusted.key)}`)
  }

  /** What must arrive is sent again until Redis takes it: a Redis restart delays it, never kills the peer. */
  const sendUntilTaken = (send: Effect.Effect<string, TransportError>, what: string) =>
    send.pipe(
      Effect.tapError((e) =>
        e === noSession ? Effect.void : Effect.logWarning(`could not send ${what} (${e.message}); retrying`),
      ),
      Effect.retry(redisBackoff),
      Effect.asVoid,
    )

  /** A message of the session: its id as token, and a MAC under the session token. */
  const sendIn = (session: Session, message: Protocol.PeerMessage) =>
    bounded(
      session.transport.sendUplink(Trust.macPayload(Protocol.encodeMessage(message), session.secret)),
      `send ${message.msg}`,
    )

  /** The session open now, if any. */
  let current: Session | undefined
  /** Tickets this process has taken and not finished (running, or waiting for a slot). */
  const inProgress = new Set<string>()
  /** Tickets whose kept result is being sent. */
  const delivering = new Set<string>()
  /** How to stop each ticket in progress, and why it was stopped (a `cancel` from the server). */
  const stoppers = new Map<string, { readonly controller: AbortController; reason?: string }>()

  /**
   * Sends a message of the session open at the time of each try: a result that waited out a
   * Redis outage, or the end of a session, goes with the session the peer has when it can be sent.
   */
  const sendInCurrent = (make: (sessionId: string) => Protocol.PeerMessage, what: string) =>
    sendUntilTaken(
      Effect.suspend(() => (current ? sendIn(current, make(current.id)) : Effect.fail(noSession))),
      what,
    )

  /** Sends a kept result until Redis takes it, then marks it sent. */
  const deliver = (kept: KeptResult) =>
    Effect.suspend(() => {
      delivering.add(kept.ticket)
      return sendInCurrent(
        (token) => ({ ...kept, msg: "result", peer_id: peerId, token }),
        `result ${kept.ticket}`,
      ).pipe(
        Effect.andThen(Effect.sync(() => journal.sent(kept.ticket))),
        Effect.ensuring(Effect.sync(() => delivering.delete(kept.ticket))),
      )
    })

  /**
   * Runs a job's command, in a slot: the run to keep and send, or undefined when the job is
   * already answered (refused, or not run).
   */
  const runCommand = Effect.fnUntraced(function* (job: Protocol.Job) {
    const base = { msg: "result", ticket: job.ticket, peer_id: peerId } as const
    if (!jobFitsPeer(job.job, config.os)) {
      yield* say(`refused job ${job.ticket} "${job.job.name}": it is for ${job.job.os}/${job.job.distro}`)
      yield* sendInCurrent(
        (token) => ({
          ...base,
          token,
          result: `refused: job is for ${job.job.os}/${job.job.distro}, this peer is ${config.os.os}/${config.os.distro}`,
          status: "refused",
          exit_code: null,
        }),
        `result ${job.ticket}`,
      )
      return undefined
    }
    const options: ExecuteOptions = {
      timeoutMs: job.job.timeout_ms ?? config.defaultTimeoutMs,
      outputCapBytes: config.outputCapBytes,
    }
    // On disk before it runs: a crash mid-job loses that result (the server times the ticket
    // out), but a ticket never runs twice, even across a restart.
    const recorded = yield* journal.started(job.ticket).pipe(Effect.result)
    if (Result.isFailure(recorded)) {
      yield* Effect.logError(recorded.failure.message)
      yield* sendInCurrent(
        (token) => ({
          ...base,
          token,
          result: "not run: this peer cannot write its journal of started tickets",
          status: "failed",
          exit_code: null,
        }),
        `result ${job.ticket}`,
      )
      return undefined
    }
    const stopper = stoppers.get(job.ticket)
    const live = makeLiveOutput({ capBytes: config.outputCapBytes })
    // Best effort, never retried: the result carries the whole output anyway.
    const sendLive = Effect.suspend(() => {
      const chunk = live.take()
      const s = current
      if (chunk === undefined || s === undefined) return Effect.succeed(false)
      const { dropped, ...rest } = chunk
      return sendIn(s, {
        msg: "output",
        ticket: job.ticket,
        peer_id: peerId,
        token: s.id,
        ...rest,
        ...(dropped > 0 ? { dropped } : {}),
      }).pipe(Effect.ignore, Effect.as(true))
    })
    const relay = yield* Effect.sleep(config.liveOutputMs ?? 250).pipe(
      Effect.andThen(sendLive),
      Effect.forever,
      Effect.forkChild,
    )
    const run = yield* execute(job.job.command, {
      ...options,
      onOutput: live.push,
      ...(stopper === undefined ? {} : { cancel: stopper.controller.signal }),
      ...(config.killGraceMs === undefined ? {} : { killGraceMs: config.killGraceMs }),
    }).pipe(Effect.ensuring(Fiber.interrupt(relay)))
    // A job that streamed sends its last output before its result (the same uplink, in order).
    if (live.taken() > 0) while (yield* sendLive) {}
    return run
  })

  /** Keeps a run's result, then sends it: out of the slot, which the next command may take meanwhile. */
  const report = Effect.fnUntraced(function* (job: Protocol.Job, run: Execution) {
    const status = run.cancelled
      ? "cancelled"
      : run.timedOut
        ? "timed_out"
        : run.exitCode === 0
          ? "succeeded"
          : "failed"
    // On disk before it is sent: if it cannot be sent before the peer stops, it is sent by the
    // next run of the peer, and the same ticket delivered again is answered from it.
    const kept: KeptResult = {
      ticket: job.ticket,
      result: run.output,
      exit_code: run.exitCode,
      status,
      started_at: run.startedAt,
      finished_at: run.finishedAt,
      truncated: run.truncated,
    }
    const finished = yield* journal.finished(kept).pipe(Effect.result)
    if (Result.isFailure(finished)) {
      // Never sent unkept: the ticket stays started, and a re-delivery is told its outcome was lost.
      yield* Effect.logError(`${finished.failure.message}: the result of ${job.ticket} is not sent`)
    } else yield* deliver(kept)
    yield* say(
      `job ${job.ticket} "${job.job.name}": ${status}${run.exitCode === null ? "" : ` (exit ${run.exitCode})`}`,
    )
  })

  /** One registration cycle: register, then serve until shutdown or rejection. */
  const cycle: Effect.Effect<AgentExit, TransportError> = Effect.scoped(
    Effect.gen(function* () {
      const cycleScope = yield* Effect.scope
      const slots = yield* Semaphore.make(config.concurrency)
      const running = new Set<Fiber.Fiber<void, TransportError>>()
      /** Set when the cycle is over: the loop stops before it reads or registers again. */
      let exit: AgentExit | undefined
      let registration: Registration | undefined
      /** Where the inbox was read up to: kept across the sessions of this cycle. */
      let cursor = "0-0"
      let lastRegister = 0
      let lastHeard = 0
      let acceptingJobs = false
      /** Kept results being sent outside a job's own fiber (the outbox, answers to re-deliveries). */
      const sending = new Set<Fiber.Fiber<void, TransportError>>()
      const sendKept = (kept: KeptResult) =>
        Effect.gen(function* () {
          const fiber = yield* deliver(kept).pipe(Effect.forkScoped)
          sending.add(fiber)
          fiber.addObserver(() => sending.delete(fiber))
        })

      const endRegistration = Effect.suspend(() => {
        const r = registration
        registration = undefined
        return r ? Scope.close(r.scope, Exit.void) : Effect.void
      })

      /** A new registration: a nonce, a ts, a box key of its own; signed by the identity key. */
      const register = Effect.gen(function* () {
        yield* endRegistration
        const nonce = randomUUID()
        const boxKey = Trust.newBoxKeyPair()
        const ts = config.state.nextRegisterTs(yield* Clock.currentTimeMillis)
        const payload = Trust.signPayload(
          Protocol.encodeMessage({
            msg: "register",
            peer_id: peerId,
            token: config.token,
            server_ip: config.serverIp,
            os: config.os.os,
            distro: config.os.distro,
            hostname: config.os.hostname,
            agent_version: config.agentVersion,
            ...(config.labels !== undefined && Object.keys(config.labels).length > 0
              ? { labels: config.labels }
              : {}),
            nonce,
            ts,
            peer_key: identity.publicKey,
            box_key: boxKey.publicKey,
          }),
          identity,
        )
        const scope = yield* Scope.fork(cycleScope)
        // Open before sending: the answer is kept in its stream, but read it from the start.
        const reader = yield* transport
          .replyReader(nonce)
          .pipe(Scope.provide(scope), Effect.retry(redisBackoff))
        registration = { nonce, payload, boxKey, reader, scope, cursor: "0-0" }
        yield* sendUntilTaken(bounded(transport.sendUplink(payload), "send register"), "the registration")
        lastRegister = yield* Clock.currentTimeMillis
      })

      const endSession = Effect.suspend(() => {
        const s = current
        current = undefined
        acceptingJobs = false
        return s ? Scope.close(s.scope, Exit.void) : Effect.void
      })

      const registerAgain = (line: string) =>
        Effect.gen(function* () {
          yield* say(line)
          yield* endSession
          yield* register
        })

      const openSession = Effect.fnUntraced(function* (
        m: Protocol.RegisterAccepted,
        acceptedAt: string,
        opened: { readonly token: string; readonly redis_user?: string; readonly redis_password?: string },
      ) {
        yield* endSession
        const scope = yield* Scope.fork(cycleScope)
        const credentials =
          config.sessionTransport && opened.redis_user !== undefined && opened.redis_password !== undefined
            ? { user: opened.redis_user, password: opened.redis_password }
            : undefined
        const built = yield* Effect.gen(function* () {
          const via = credentials
            ? Context.get(
                yield* Layer.buildWithScope(config.sessionTransport!(credentials), scope),
                Transport,
              )
            : transport
          const reader = yield* via.inboxReader(peerId).pipe(Scope.provide(scope))
          return { via, reader }
        }).pipe(Effect.result)
        if (Result.isFailure(built)) {
          yield* Scope.close(scope, Exit.void)
          return yield* registerAgain(
            `cannot open the session's connection (${built.failure.message}): registering again`,
          )
        }
        const s: Session = {
          id: m.token,
          secret: opened.token,
          serverKey: Trust.serverToPeerKey(opened.token),
          sessionId: m.session_id,
          heartbeatMs: m.heartbeat_ms ?? 5_000,
          acceptedAt,
          transport: built.success.via,
          reader: built.success.reader,
          scope,
        }
        current = s
        acceptingJobs = true
        lastHeard = yield* Clock.currentTimeMillis
        // A heartbeat lost to a Redis outage is just a missed beat.
        yield* Effect.suspend(() =>
          sendIn(s, { msg: "heartbeat", peer_id: peerId, token: s.id, running: running.size }),
        ).pipe(Effect.ignore, Effect.delay(s.heartbeatMs), Effect.forever, Effect.forkIn(scope))
        yield* say(
          `registered as ${peerId} (session ${m.session_id ?? "?"}, server ${m.server_id ?? "?"}${credentials ? ", own Redis user" : ""})`,
        )
        // The outbox: results kept but not delivered (Redis was away, or the peer stopped).
        const outbox = journal.pending().filter((kept) => !delivering.has(kept.ticket))
        if (outbox.length > 0) yield* Effect.logInfo(`sending ${outbox.length} kept result(s)`)
        for (const kept of outbox) yield* sendKept(kept)
      })

      const onAccepted = Effect.fnUntraced(function* (envelope: Envelope, m: Protocol.RegisterAccepted) {
        const checked = verify ? checkAcceptance(envelope.payload, m, trusted) : undefined
        if (checked !== undefined && !checked.ok) return yield* refusals.refuse(checked.kind, checked.why)
        const r = registration
        if (r === undefined || m.nonce !== r.nonce) {
          return yield* refusals.refuse(
            "replayed",
            "an acceptance that answers no registration in progress (an old one sent again?)",
          )
        }
        const opened = openSealed(r.boxKey, m.sealed)
        if (Result.isFailure(opened)) return yield* refusals.refuse("unsealable", opened.failure)
        if (checked?.change !== undefined) {
          // The pin given that led here stays the key's origin, through every rotation.
          const from =
            trusted._tag === "Pinned"
              ? trusted.from
              : trusted._tag === "Fingerprint"
                ? trusted.fingerprint
                : FIRST_USE
          const before = trusted._tag === "Pinned" ? Trust.fingerprintOf(trusted.key) : undefined
          config.state.pinClusterKey({ key: checked.key, from })
          trusted = { _tag: "Pinned", key: checked.key, from }
          const fingerprint = Trust.fingerprintOf(checked.key)
          yield* say(
            checked.change === "first-use"
              ? `WARNING: pinned the cluster key of the first server that answered, unchecked (trust on first use): ${fingerprint}`
              : checked.change === "fingerprint"
                ? `pinned cluster key ${fingerprint} (its fingerprint is the one given)`
                : `the cluster moved to a new key, endorsed by the pinned one: now pinned ${fingerprint} (was ${before})`,
          )
        }
        yield* endRegistration
        yield* openSession(m, envelope.id, opened.success)
      })

      const onRejected = Effect.fnUntraced(function* (envelope: Envelope, m: Protocol.RegisterRejected) {
        const reason = m.reason ?? "no reason given"
        if (verify) {
          const checked = checkServerMessage(envelope.payload, trusted, `a rejection (${shown(reason)})`)
          if (!checked.ok) return yield* refusals.refuse(checked.kind, checked.why)
        }
        if (reason === Protocol.RejectReason.sessionExpired) {
          // Answers a heartbeat or result, never a registration.
          if (current === undefined) {
            return yield* Effect.logInfo(
              "ignored a late session_expired: waiting for the registration's answer",
            )
          }
          if (compareStreamIds(envelope.id, current.acceptedAt) < 0) {
            return yield* Effect.logInfo("ignored a session_expired from before this session")
          }
          return yield* registerAgain("the server no longer knows this session: registering again")
        }
        if (current !== undefined) return // a stale answer to an earlier registration
        if (registration === undefined || m.nonce !== registration.nonce) {
          return yield* refusals.refuse(
            "replayed",
            `a rejection (${shown(reason)}) that answers another registration`,
          )
        }
        yield* say(
          reason === Protocol.RejectReason.replayed
            ? `registration rejected: ${reason} (is this host's clock right? the server allows a few minutes)`
            : `registration rejected: ${reason}`,
        )
        yield* endRegistration
        // The server stopping is a shutdown for this peer; any other "not now" is only a wait, even
        // for a peer told to exit after a shutdown.
        exit = !Protocol.isRetryableRejection(reason)
          ? { _tag: "Rejected", reason }
          : reason === Protocol.RejectReason.shuttingDown
            ? { _tag: "Shutdown", reason }
            : { _tag: "Retry", reason }
      })

      /**
       * Checks what a message of the session must carry: the pinned key's signature, and the
       * current session's id. Entries from before the session (an earlier session's) are old news.
       */
      const ofSession = (envelope: Envelope, token: string, what: string) =>
        Effect.gen(function* () {
          if (verify) {
            const checked = checkServerMessage(envelope.payload, trusted, what, current?.serverKey)
            if (!checked.ok) {
              yield* refusals.refuse(checked.kind, checked.why)
              return undefined
            }
          }
          const s = current
          if (s === undefined || token !== s.id) {
            if (s !== undefined && compareStreamIds(envelope.id, s.acceptedAt) < 0) return undefined
            yield* refusals.refuse("another session", `${what}: not for the current session`)
            return undefined
          }
          lastHeard = yield* Clock.currentTimeMillis
          return s
        })

      const onJob = Effect.fnUntraced(function* (envelope: Envelope, job: Protocol.Job) {
        const s = yield* ofSession(envelope, job.token, `job ${shown(job.ticket)}`)
        if (s === undefined) return
        if (!acceptingJobs) return yield* Effect.logInfo(`skipped job ${job.ticket}: shutting down`)
        if (inProgress.has(job.ticket)) {
          return yield* Effect.logWarning(`skipped job ${job.ticket}: delivered again while it runs`)
        }
        if (delivering.has(job.ticket)) {
          return yield* Effect.logInfo(`skipped job ${job.ticket}: delivered again, its result is being sent`)
        }
        const kept = journal.kept(job.ticket)
        if (kept) {
          // Run before and its answer did not reach the server (or came too late): the same
          // answer again, for this session.
          yield* Effect.logInfo(`answering job ${job.ticket} from its kept result, without running it again`)
          return yield* sendKept(kept)
        }
        if (journal.hasRun(job.ticket)) {
          // Started before, by a process that stopped before it kept the outcome: say so rather
          // than run a command twice.
          yield* Effect.logWarning(`not running job ${job.ticket} again: it was started before`)
          return yield* sendInCurrent(
            (token) => ({
              msg: "result",
              ticket: job.ticket,
              peer_id: peerId,
              token,
              result: "not run again: this peer started it before, and its outcome was lost",
              status: "failed",
              exit_code: null,
            }),
            `result ${job.ticket}`,
          )
        }
        inProgress.add(job.ticket)
        const stopper: { readonly controller: AbortController; reason?: string } = {
          controller: new AbortController(),
        }
        stoppers.set(job.ticket, stopper)
        // A job still waiting for a slot when `shutdown` arrives is not started; one cancelled
        // meanwhile is reported cancelled, never run.
        const whenSlotFree = Effect.suspend(() =>
          stopper.controller.signal.aborted
            ? Clock.currentTimeMillis.pipe(
                Effect.map(
                  (at): Execution => ({
                    exitCode: null,
                    output: "",
                    truncated: false,
                    timedOut: false,
                    cancelled: true,
                    startedAt: at,
                    finishedAt: at,
                  }),
                ),
              )
            : acceptingJobs
              ? runCommand(job)
              : Effect.succeed(undefined),
        )
        const fiber = yield* slots
          .withPermits(1)(whenSlotFree)
          .pipe(
            Effect.flatMap((run) => (run === undefined ? Effect.void : report(job, run))),
            Effect.ensuring(
              Effect.sync(() => {
                inProgress.delete(job.ticket)
                stoppers.delete(job.ticket)
              }),
            ),
            Effect.forkScoped,
          )
        running.add(fiber)
        fiber.addObserver(() => running.delete(fiber))
      })

      /**
       * The server asks to stop a job: its process group is killed and it is reported `cancelled`
       * (its output so far kept), or, still waiting for a slot, never started. A ticket not in
       * progress here (finished, or never received) is left alone: its result stands.
       */
      const onCancel = Effect.fnUntraced(function* (envelope: Envelope, m: Protocol.Cancel) {
        const s = yield* ofSession(envelope, m.token, `a cancel of ${shown(m.ticket)}`)
        if (s === undefined) return
        const stopper = stoppers.get(m.ticket)
        if (stopper === undefined || stopper.controller.signal.aborted) return
        stopper.reason = m.reason
        stopper.controller.abort()
        yield* say(`job ${m.ticket}: cancelled (${shown(m.reason)})`)
      })

      const onShutdown = Effect.fnUntraced(function* (envelope: Envelope, m: Protocol.Shutdown) {
        const s = yield* ofSession(envelope, m.token, "a shutdown")
        if (s === undefined) return
        acceptingJobs = false
        yield* say(`server shutdown${m.server_id ? ` (${m.server_id})` : ""}: ${m.reason}`)
        // Jobs already running finish and report; the server waits a little for them. Then the
        // peer says it is done, so the server need not wait any longer.
        yield* Fiber.joinAll([...running]).pipe(Effect.ignore)
        yield* Fiber.joinAll([...sending]).pipe(Effect.ignore)
        yield* sendIn(s, {
          msg: "logout",
          peer_id: peerId,
          token: s.id,
          reason: Protocol.LogoutReason.serverShutdown,
        }).pipe(Effect.ignore)
        yield* endSession
        exit = { _tag: "Shutdown", reason: m.reason }
      })

      const handle = (envelope: Envelope) =>
        Effect.gen(function* () {
          const decoded = Protocol.decodeServerMessage(envelope.payload)
          if (Result.isFailure(decoded)) {
            return yield* refusals.refuse("malformed", decoded.failure.message)
          }
          const message = decoded.success
          switch (Protocol.serverMessageKind(message)) {
            case "heartbeat": {
              // The server is still there (the check notes the time).
              yield* ofSession(envelope, message.token, "a heartbeat")
              return
            }
            case "register_accepted":
              return yield* onAccepted(envelope, message as Protocol.RegisterAccepted)
            case "register_rejected":
              return yield* onRejected(envelope, message as Protocol.RegisterRejected)
            case "job":
              return yield* onJob(envelope, message as Protocol.Job)
            case "shutdown":
              return yield* onShutdown(envelope, message as Protocol.Shutdown)
            case "cancel":
              return yield* onCancel(envelope, message as Protocol.Cancel)
          }
        })

      /** Said once per outage: the transport tells of the connection itself. */
      let readFailing = false
      /** When a read last succeeded (on the session's connection, once the session opened). */
      let lastGoodRead = 0
      /** In an outage of the session's connection: when its link was last known good. */
      let linkGoodAt = 0
      const hung = new TransportError({ operation: "read", message: "no answer from Redis" })
      const readOr = (
        read: (blockMs: number) => Effect.Effect<ReadonlyArray<Envelope>, TransportError>,
        blockMs: number,
        what: string,
      ) =>
        read(blockMs).pipe(
          Effect.timeoutOrElse({
            duration: blockMs + SESSION_LINK_GRACE_MS - 1_000,
            orElse: () => Effect.fail(hung),
          }),
          Effect.tap(() =>
            Effect.gen(function* () {
              readFailing = false
              lastGoodRead = yield* Clock.currentTimeMillis
            }),
          ),
          Effect.catch((e) =>
            Effect.gen(function* () {
              const now = yield* Clock.currentTimeMillis
              const why =
                e === hung
                  ? `no answer from Redis in ${(blockMs + SESSION_LINK_GRACE_MS - 1_000) / 1000}s`
                  : e.message
              if (current !== undefined && current.transport !== transport) {
                // Fixed at the outage's first failure. A hung read says nothing since the last good
                // one; a read refused after blocking a while had a good link until about a short
                // block ago (it would have been refused then had the link been gone).
                if (!readFailing)
                  linkGoodAt = e === hung ? lastGoodRead : Math.max(lastGoodRead, now - READ_BLOCK_MS)
                // The session's own user: Redis drops it when the session ends (revoked, replaced,
                // timed out), and the peer registers again over the enrollment connection.
                if (accessGone(e) || now - Math.max(linkGoodAt, lastHeard) >= SESSION_LINK_GRACE_MS) {
                  yield* registerAgain(`the session's Redis connection fails (${why}): registering again`)
                  return [] as ReadonlyArray<Envelope>
                }
              }
              if (!readFailing)
                yield* Effect.logWarning(`cannot read ${what} (${why}); retrying every second`)
              readFailing = true
              yield* Effect.sleep("1 second")
              return [] as ReadonlyArray<Envelope>
            }),
          ),
        )

      /** Inbox entries read since the last trim: trimmed in batches, or once a read finds none. */
      let untrimmed = 0
      const loop = Effect.gen(function* () {
        while (exit === undefined) {
          const s = current
          const r = registration
          if (s !== undefined) {
            // Short while entries wait to be trimmed (a quiet read trims them), and never past
            // the moment the server's silence is to be noticed.
            const now = yield* Clock.currentTimeMillis
            const untilSilent = lastHeard + (config.serverSilenceMs ?? 60_000) - now
            const blockMs = untrimmed > 0 ? READ_BLOCK_MS : Math.min(IDLE_READ_BLOCK_MS, untilSilent)
            const entries = yield* readOr(
              (ms) => s.reader.read(cursor, { count: 64, blockMs: ms }),
              Math.max(READ_BLOCK_MS, blockMs),
              "the inbox",
            )
            for (const entry of entries) {
              yield* handle(entry)
              cursor = entry.id
              if (current !== s) break // the session ended: what follows was for it
            }
            untrimmed += entries.length
            // Not over a connection that just failed: the trim would wait out its timeout.
            const quiet = entries.length === 0 && !readFailing && current === s
            if (untrimmed >= TRIM_EVERY || (quiet && untrimmed > 0)) {
              untrimmed = 0
              yield* bounded(s.transport.trimInbox(peerId, cursor), "trim").pipe(Effect.ignore)
            }
          } else if (r !== undefined) {
            const entries = yield* readOr(
              (blockMs) => r.reader.read(r.cursor, { count: 16, blockMs }),
              READ_BLOCK_MS,
              "the answer to the registration",
            )
            for (const entry of entries) {
              r.cursor = entry.id
              yield* handle(entry)
              if (registration !== r) break
            }
          } else {
            yield* register
          }
          if (exit !== undefined) break
          yield* refusals.flush
          const now = yield* Clock.currentTimeMillis
          if (current !== undefined && now - lastHeard > (config.serverSilenceMs ?? 60_000)) {
            yield* registerAgain(
              `nothing from the server for ${Math.round((now - lastHeard) / 1000)}s: registering again`,
            )
          }
          if (
            current === undefined &&
            registration !== undefined &&
            now - lastRegister > config.registerTimeoutMs
          ) {
            // The same registration again (same nonce, same ts): a server that took the first
            // refuses this one as a replay, so one registration never opens two sessions.
            yield* Effect.logInfo("no answer to the registration yet: sending it again")
            yield* sendUntilTaken(
              bounded(transport.sendUplink(registration.payload), "send register"),
              "the registration",
            )
            lastRegister = now
          }
        }
        return exit!
      })
      yield* register
      return yield* loop
    }).pipe(
      Effect.ensuring(
        Effect.sync(() => {
          current = undefined
        }),
      ),
    ),
  )

  return {
    /** Registers and serves; after a shutdown registers again unless configured to exit. */
    run: Effect.gen(function* () {
      let attempt = 0
      while (true) {
        const exit = yield* cycle
        if (exit._tag === "Rejected" || (exit._tag === "Shutdown" && config.exitOnShutdown)) return exit
        attempt++
        const ceiling = Math.min(config.reconnectMaxMs, config.reconnectBaseMs * 2 ** Math.min(attempt, 10))
        const wait = Math.round(ceiling / 2 + (yield* Random.nextBetween(0, ceiling / 2)))
        yield* say(`registering again in ${(wait / 1000).toFixed(1)}s`)
        yield* Effect.sleep(wait)
      }
    }),
    /** Logs out of the current session, if any (Ctrl+C on the peer): call it before stopping `run`. */
    logout: (reason: string) =>
      Effect.suspend(() =>
        current
          ? sendIn(current, { msg: "logout", peer_id: peerId, token: current.id, reason }).pipe(Effect.asVoid)
          : Effect.void,
      ),
  }
})
