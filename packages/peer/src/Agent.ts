import { randomUUID } from "node:crypto"
import { type Envelope, jobFitsPeer, Protocol, Transport, type TransportError } from "@picus/core"
import { Console, Deferred, Effect, Fiber, Random, Result, Schedule, Semaphore } from "effect"
import { type ExecuteOptions, execute } from "./executor.ts"
import type { OsInfo } from "./osInfo.ts"
import type { KeptResult, StateFile } from "./state.ts"

export interface AgentConfig {
  readonly token: string
  readonly serverIp: string
  readonly os: OsInfo
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
}

/** Retries of Redis commands while Redis is away: quickly at first, then every 5 seconds. */
const redisBackoff = Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")])

/** How the agent stopped. */
export type AgentExit =
  | { readonly _tag: "Rejected"; readonly reason: string }
  | { readonly _tag: "Shutdown"; readonly reason: string }

interface Session {
  readonly token: string
  readonly sessionId: string | undefined
  readonly heartbeatMs: number
}

/**
 * The peer's side of the protocol: register, run the jobs that arrive in its inbox, send each
 * result, heartbeat, and react to `shutdown`. One registration cycle at a time; after a shutdown
 * it registers again (with backoff) unless told to exit.
 */
export const makeAgent = Effect.fnUntraced(function* (config: AgentConfig) {
  const transport = yield* Transport
  const peerId = config.state.peerId
  const say = config.say ?? ((line: string) => Console.log(line))
  const send = (message: Protocol.PeerMessage) => transport.sendUplink(Protocol.encodeMessage(message))
  /**
   * What must arrive (a registration, a result) is sent again until Redis takes it: a Redis
   * restart delays it, and never kills the peer.
   */
  const sendUntilAccepted = (message: Protocol.PeerMessage) =>
    send(message).pipe(
      Effect.tapError((e) => Effect.logWarning(`could not send ${message.msg} (${e.message}); retrying`)),
      Effect.retry(redisBackoff),
      Effect.asVoid,
    )
  let current: Session | undefined
  /** Tickets this process has taken and not finished (running, or waiting for a slot). */
  const inProgress = new Set<string>()
  /** Tickets whose kept result is being sent. */
  const delivering = new Set<string>()

  /**
   * The nonce of the registration in progress: the server echoes it, so a reply drawn by a
   * registration in this peer's name by someone else (a bad token, say) is told apart and ignored.
   */
  let nonce = randomUUID()
  const sendRegistration = Effect.suspend(() =>
    sendUntilAccepted({
      msg: "register",
      peer_id: peerId,
      token: config.token,
      server_ip: config.serverIp,
      os: config.os.os,
      distro: config.os.distro,
      hostname: config.os.hostname,
      agent_version: config.agentVersion,
      nonce,
    }),
  )
  /** A new registration, with a nonce of its own. */
  const register = Effect.suspend(() => {
    nonce = randomUUID()
    return sendRegistration
  })

  const sendResult = sendUntilAccepted

  /**
   * Sends a kept result until Redis takes it, then marks it delivered. Each try quotes the session
   * that is current then (`fallbackToken` between sessions): a result that waited out a Redis outage
   * goes with the session the peer has when Redis is back.
   */
  const deliver = (kept: KeptResult, fallbackToken: string) =>
    Effect.suspend(() => {
      delivering.add(kept.ticket)
      return Effect.suspend(() =>
        send({ ...kept, msg: "result", peer_id: peerId, token: current?.token ?? fallbackToken }),
      ).pipe(
        Effect.tapError((e) =>
          Effect.logWarning(`could not send result ${kept.ticket} (${e.message}); retrying`),
        ),
        Effect.retry(redisBackoff),
        Effect.andThen(Effect.sync(() => config.state.markDelivered(kept.ticket))),
        Effect.ensuring(Effect.sync(() => delivering.delete(kept.ticket))),
      )
    })

  const runJob = Effect.fnUntraced(function* (session: Session, job: Protocol.Job) {
    const base = { msg: "result", ticket: job.ticket, peer_id: peerId, token: session.token } as const
    if (!jobFitsPeer(job.job, config.os)) {
      yield* say(`refused job ${job.ticket} "${job.job.name}": it is for ${job.job.os}/${job.job.distro}`)
      return yield* sendResult({
        ...base,
        result: `refused: job is for ${job.job.os}/${job.job.distro}, this peer is ${config.os.os}/${config.os.distro}`,
        status: "refused",
        exit_code: null,
      })
    }
    const options: ExecuteOptions = {
      timeoutMs: job.job.timeout_ms ?? config.defaultTimeoutMs,
      outputCapBytes: config.outputCapBytes,
    }
    // Remembered on disk before it runs: a crash mid-job loses that result (the server times the
    // ticket out), but a ticket never runs twice, even across a restart.
    config.state.markRun(job.ticket)
    const run = yield* execute(job.job.command, options)
    const status = run.timedOut ? "timed_out" : run.exitCode === 0 ? "succeeded" : "failed"
    // Kept on disk before it is sent: if it cannot be sent before the peer stops, it is sent by
    // the next run of the peer, and the same ticket delivered again is answered from it.
    const kept: KeptResult = {
      ticket: job.ticket,
      result: run.output,
      exit_code: run.exitCode,
      status,
      started_at: run.startedAt,
      finished_at: run.finishedAt,
      truncated: run.truncated,
    }
    config.state.keep(kept)
    yield* deliver(kept, session.token)
    yield* say(
      `job ${job.ticket} "${job.job.name}": ${status}${run.exitCode === null ? "" : ` (exit ${run.exitCode})`}`,
    )
  })

  /** One registration cycle: register, then serve until shutdown or rejection. */
  const cycle: Effect.Effect<AgentExit, TransportError> = Effect.scoped(
    Effect.gen(function* () {
      const reader = yield* transport.inboxReader(peerId)
      let cursor = yield* transport.inboxTail(peerId).pipe(Effect.retry(redisBackoff))
      yield* register
      let lastRegister = Date.now()
      let lastHeard = Date.now()
      const slots = yield* Semaphore.make(config.concurrency)
      const running = new Set<Fiber.Fiber<void, TransportError>>()
      const stop = yield* Deferred.make<AgentExit>()
      let heartbeat: Fiber.Fiber<void, TransportError> | undefined
      let session: Session | undefined
      let acceptingJobs = false
      /** Kept results being sent outside a job's own fiber (the outbox, answers to re-deliveries). */
      const sending = new Set<Fiber.Fiber<void, TransportError>>()
      const sendKept = (kept: KeptResult, token: string) =>
        Effect.gen(function* () {
          const fiber = yield* deliver(kept, token).pipe(Effect.forkScoped)
          sending.add(fiber)
          fiber.addObserver(() => sending.delete(fiber))
        })

      const handle = (envelope: Envelope) =>
        Effect.gen(function* () {
          const decoded = Protocol.decodeServerMessage(envelope.payload)
          if (Result.isFailure(decoded)) {
            return yield* Effect.logWarning(`ignored a malformed message: ${decoded.failure.message}`)
          }
          const message = decoded.success
          if (session && message.token === session.token) lastHeard = Date.now()
          switch (Protocol.serverMessageKind(message)) {
            case "heartbeat":
              return // the server is still there (it noted the time above)
            case "register_accepted": {
              const m = message as Protocol.RegisterAccepted
              if (m.nonce !== undefined && m.nonce !== nonce) {
                return yield* Effect.logWarning("ignored an acceptance that answers another registration")
              }
              session = { token: m.token, sessionId: m.session_id, heartbeatMs: m.heartbeat_ms ?? 5_000 }
              lastHeard = Date.now()
              current = session
              acceptingJobs = true
              if (heartbeat) yield* Fiber.interrupt(heartbeat)
              const s = session
              // A heartbeat lost to a Redis outage is just a missed beat.
              heartbeat = yield* send({
                msg: "heartbeat",
                peer_id: peerId,
                token: s.token,
                running: running.size,
              }).pipe(Effect.ignore, Effect.delay(s.heartbeatMs), Effect.forever, Effect.forkScoped)
              yield* say(
                `registered as ${peerId} (session ${m.session_id ?? "?"}, server ${m.server_id ?? "?"})`,
              )
              // The outbox: results kept but not delivered (Redis was away, or the peer stopped).
              const outbox = config.state.pending().filter((kept) => !delivering.has(kept.ticket))
              if (outbox.length > 0) yield* Effect.logInfo(`sending ${outbox.length} kept result(s)`)
              for (const kept of outbox) yield* sendKept(kept, s.token)
              return
            }
            case "register_rejected": {
              const reason = (message as Protocol.RegisterRejected).reason ?? "no reason given"
              if (!session && reason === Protocol.RejectReason.sessionExpired) {
                // Never the answer to a registration: a late answer to a heartbeat of a session
                // that has ended. The answer to the registration is still to come.
                return yield* Effect.logInfo(
                  "ignored a late session_expired: waiting for the registration's answer",
                )
              }
              if (session && reason === Protocol.RejectReason.sessionExpired) {
                yield* say("the server no longer knows this session: registering again")
                session = undefined
                current = undefined
                acceptingJobs = false
                yield* register
                lastRegister = Date.now()
                return
              }
              if (session) return // a stale answer to an earlier registration
              if ((message as Protocol.RegisterRejected).nonce !== nonce) {
                // Someone registered in this peer's name (with a bad token, say): not our answer.
                return yield* Effect.logWarning(
                  `ignored a rejection (${reason}) that answers another registration`,
                )
              }
              yield* say(`registration rejected: ${reason}`)
              // "Not now" (the server is stopping) is a shutdown for this peer: back off and retry.
              return yield* Deferred.succeed(
                stop,
                Protocol.isRetryableRejection(reason)
                  ? { _tag: "Shutdown" as const, reason }
                  : { _tag: "Rejected" as const, reason },
              )
            }
            case "job": {
              const job = message as Protocol.Job
              if (!session || job.token !== session.token) {
                return yield* Effect.logWarning(`ignored job ${job.ticket}: not for the current session`)
              }
              if (!acceptingJobs) return yield* Effect.logInfo(`skipped job ${job.ticket}: shutting down`)
              const s = session
              if (inProgress.has(job.ticket)) {
                return yield* Effect.logWarning(`skipped job ${job.ticket}: delivered again while it runs`)
              }
              if (delivering.has(job.ticket)) {
                return yield* Effect.logInfo(
                  `skipped job ${job.ticket}: delivered again, its result is being sent`,
                )
              }
              const kept = config.state.kept(job.ticket)
              if (kept) {
                // Run before and its answer did not reach the server (or came too late): the same
                // answer again, for this session.
                yield* Effect.logInfo(
                  `answering job ${job.ticket} from its kept result, without running it again`,
                )
                return yield* sendKept(kept, s.token)
              }
              if (config.state.hasRun(job.ticket)) {
                // Started before, by a process that stopped before it kept the outcome: say so
                // rather than run a command twice.
                yield* Effect.logWarning(`not running job ${job.ticket} again: it was started before`)
                return yield* sendResult({
                  msg: "result",
                  ticket: job.ticket,
                  peer_id: peerId,
                  token: s.token,
                  result: "not run again: this peer started it before, and its outcome was lost",
                  status: "failed",
                  exit_code: null,
                })
              }
              inProgress.add(job.ticket)
              // A job still waiting for a slot when `shutdown` arrives is not started.
              const whenSlotFree = Effect.suspend(() => (acceptingJobs ? runJob(s, job) : Effect.void))
              const fiber = yield* slots.withPermits(1)(whenSlotFree).pipe(Effect.forkScoped)
              running.add(fiber)
              yield* Fiber.await(fiber).pipe(
                Effect.andThen(
                  Effect.sync(() => {
                    running.delete(fiber)
                    inProgress.delete(job.ticket)
                  }),
                ),
                Effect.forkScoped,
              )
              return
            }
            case "shutdown": {
              const m = message as Protocol.Shutdown
              if (!session || m.token !== session.token) return
              acceptingJobs = false
              yield* say(`server shutdown${m.server_id ? ` (${m.server_id})` : ""}: ${m.reason}`)
              // Jobs already running finish and report; the server waits a little for them. Then
              // the peer says it is done, so the server need not wait any longer.
              yield* Fiber.joinAll([...running]).pipe(Effect.ignore)
              yield* Fiber.joinAll([...sending]).pipe(Effect.ignore)
              if (heartbeat) yield* Fiber.interrupt(heartbeat)
              yield* send({
                msg: "logout",
                peer_id: peerId,
                token: session.token,
                reason: Protocol.LogoutReason.serverShutdown,
              }).pipe(Effect.ignore)
              session = undefined
              current = undefined
              return yield* Deferred.succeed(stop, { _tag: "Shutdown" as const, reason: m.reason })
            }
          }
        })

      /** Said once per outage: the transport tells of the connection itself. */
      let inboxFailing = false
      const loop = Effect.gen(function* () {
        while (true) {
          const entries = yield* reader.read(cursor, { count: 64, blockMs: 1_000 }).pipe(
            Effect.tap(() =>
              Effect.sync(() => {
                inboxFailing = false
              }),
            ),
            Effect.catch((e) =>
              (inboxFailing
                ? Effect.void
                : Effect.logWarning(`cannot read the inbox (${e.message}); retrying every second`)
              ).pipe(
                Effect.andThen(
                  Effect.sync(() => {
                    inboxFailing = true
                  }),
                ),
                Effect.andThen(Effect.sleep("1 second")),
                Effect.as([]),
              ),
            ),
          )
          for (const entry of entries) {
            yield* handle(entry)
            cursor = entry.id
          }
          if (entries.length > 0) yield* transport.trimInbox(peerId, cursor).pipe(Effect.ignore)
          if (session && Date.now() - lastHeard > (config.serverSilenceMs ?? 60_000)) {
            yield* say(
              `nothing from the server for ${Math.round((Date.now() - lastHeard) / 1000)}s: registering again`,
            )
            session = undefined
            current = undefined
            acceptingJobs = false
            if (heartbeat) yield* Fiber.interrupt(heartbeat)
            yield* register
            lastRegister = Date.now()
          }
          if (!session && Date.now() - lastRegister > config.registerTimeoutMs) {
            yield* Effect.logInfo("no answer to the registration yet: sending it again")
            yield* sendRegistration
            lastRegister = Date.now()
          }
        }
      })
      return yield* loop.pipe(Effect.raceFirst(Deferred.await(stop)))
    }),
  )

  return {
    /** Registers and serves; after a shutdown registers again unless configured to exit. */
    run: Effect.gen(function* () {
      let attempt = 0
      while (true) {
        const exit = yield* cycle
        if (exit._tag === "Rejected" || config.exitOnShutdown) return exit
        attempt++
        const ceiling = Math.min(config.reconnectMaxMs, config.reconnectBaseMs * 2 ** Math.min(attempt, 10))
        const wait = Math.round(ceiling / 2 + (yield* Random.nextBetween(0, ceiling / 2)))
        yield* say(`registering again in ${(wait / 1000).toFixed(1)}s`)
        yield* Effect.sleep(wait)
      }
    }),
    /** Logs out of the current session, if any (Ctrl+C on the peer). */
    logout: (reason: string) =>
      current
        ? send({ msg: "logout", peer_id: peerId, token: current.token, reason }).pipe(Effect.asVoid)
        : Effect.void,
  }
})
