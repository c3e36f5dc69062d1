import { randomUUID } from "node:crypto"
import { type InboxFanOptions, Protocol, Transport, type TransportError, Trust } from "@picus/core"
import { Deferred, Effect, Queue, Result } from "effect"
import {
  type Counters,
  diffCounters,
  emptyCounters,
  LatencyHistogram,
  type LatencySummary,
  type Tick,
} from "./Stats.ts"

export interface OsLabels {
  readonly os: string
  readonly distro: string
}

export interface FleetConfig {
  readonly peers: number
  /** Peer ids are `sim-<runId>-<i>`: a fresh run id gives fresh peers. */
  readonly runId: string
  /** The enrollment token every simulated peer registers with. */
  readonly token: string
  readonly serverIp: string
  /** Sent at registration; undefined sends no os/distro: only catalog jobs marked any fit them. */
  readonly os: OsLabels | undefined
  readonly agentVersion: string
  /**
   * Register with a box key, as the real peer does: the session token comes sealed, and every
   * message of the session carries a MAC under it (and the server MACs its own instead of signing).
   */
  readonly sealed?: boolean
  /** How long a job "runs" before its result is sent (0: answered at once). */
  readonly jobMs: number
  /** The first registrations are spread over this long (0: all at once). */
  readonly rampMs: number
  /** Without an answer to a registration for this long, send it again (as the real peer does). */
  readonly registerTimeoutMs: number
  /** Backoff before registering again after a shutdown or a "not now": base, doubled, capped. */
  readonly reconnectBaseMs: number
  readonly reconnectMaxMs: number
  readonly fan?: InboxFanOptions
}

/** The final (or current) figures of a run; printed as JSON for the benchmark driver. */
export interface FleetReport {
  readonly runId: string
  readonly peers: number
  /** Peers logged in now. */
  readonly online: number
  /** Peers accepted at least once. */
  readonly acceptedPeers: number
  /** Peers refused for good (a rejection that is not retryable). */
  readonly rejectedPeers: number
  /** From the start to the moment every peer had been accepted once; null if that never happened. */
  readonly allAcceptedMs: number | null
  readonly elapsedMs: number
  readonly counters: Counters
  readonly rejectReasons: Readonly<Record<string, number>>
  /** From sending a registration to reading its acceptance. */
  readonly registerLatency: LatencySummary
  readonly perSecond: ReadonlyArray<Tick>
}

type PeerState = "waiting" | "registering" | "online" | "rejected" | "stopped"

interface SimPeer {
  readonly id: string
  state: PeerState
  session: string | undefined
  heartbeatMs: number
  /** waiting: when to register; registering: when to send it again; online: the next heartbeat. */
  dueAt: number
  /** When the registration being answered was sent. */
  registerSentAt: number
  attempt: number
  everAccepted: boolean
  running: number
  /** The nonce of its registration in progress (echoed in the reply), as the real peer does. */
  nonce: string
  /**
   * What came in its inbox while it waited for its answer: the answer comes in the registration's
   * reply stream, which may be read after the session's first jobs. Handled once it is accepted.
   */
  early: Array<string>
  /** Sealed sessions: the registration's box key, and the session token it unsealed. */
  box: Trust.BoxKeyPair | undefined
  secret: string | undefined
}

interface Outgoing {
  readonly kind: Protocol.PeerMessage["msg"]
  readonly payload: string
}

/** Messages per uplink round trip: large enough to carry a registration storm in a few. */
const MAX_BATCH = 1_000
const SCAN_MS = 100
const FLUSH_MS = 5
/** With nothing to send, the flusher still looks this often (for replies to watch or let go). */
const FLUSH_IDLE_MS = 100
/** Inbox entries kept per peer while it waits for its answer. */
const MAX_EARLY = 256

/**
 * Many protocol peers in one process, for load tests and capacity planning. Each speaks exactly
 * what the real peer (peer/Agent.ts) speaks — register, heartbeat, answer jobs, log out on
 * shutdown and come back — but answers jobs in-process instead of running a shell.
 *
 * It scales by sharing: one inbox fan reads every inbox over a few connections, one outbox sends
 * the uplink in batches, and one timer loop walks the peers for heartbeats and registrations that
 * are due (rather than a timer per peer).
 */
export const makeSimulatedFleet = Effect.fnUntraced(function* (config: FleetConfig) {
  const transport = yield* Transport
  const startedAt = Date.now()
  const counters = emptyCounters()
  const rejectReasons: Record<string, number> = {}
  const latency = new LatencyHistogram()
  const ticks: Array<Tick> = []
  const allAccepted = yield* Deferred.make<number>()
  const refused = yield* Deferred.make<string>()
  let acceptedPeers = 0
  let allAcceptedMs: number | null = null
  let rejectedPeers = 0
  let online = 0
  let stopped = false

  const peers: Array<SimPeer> = Array.from({ length: config.peers }, (_, i) => ({
    id: `sim-${config.runId}-${i}`,
    state: "waiting",
    session: undefined,
    heartbeatMs: 5_000,
    dueAt: startedAt + Math.floor((i / config.peers) * config.rampMs),
    registerSentAt: 0,
    attempt: 0,
    everAccepted: false,
    nonce: "",
    early: [],
    box: undefined,
    secret: undefined,
    running: 0,
  }))
  const byId = new Map(peers.map((p) => [p.id, p]))

  const outbox: Array<Outgoing> = []
  /** Wakes the flusher when there is something to send. */
  const wake = yield* Queue.dropping<void>(1)
  // A registration with a nonce is answered in a reply stream of its own: the fan watches it
  // until the peer has its answer or registers again.
  const repliesWanted: Array<{ readonly nonce: string; readonly peerId: string }> = []
  const repliesDone: Array<string> = []
  const send = (message: Protocol.PeerMessage) => {
    const payload = Protocol.encodeMessage(message)
    // A sealed session's messages carry its id as their token and end with a MAC under its secret.
    const secret = message.msg === "register" ? undefined : byId.get(message.peer_id)?.secret
    Queue.offerUnsafe(wake, undefined)
    outbox.push({
      kind: message.msg,
      payload: secret === undefined ? payload : Trust.macPayload(payload, secret),
    })
  }

  /** Results of jobs still "running"; every job runs jobMs, so they fall due in arrival order. */
  const delayed: Array<{ readonly at: number; readonly peer: SimPeer; readonly result: Protocol.Result }> = []

  const setOnline = (peer: SimPeer, state: PeerState) => {
    if (peer.state === "online" && state !== "online") online--
    if (peer.state !== "online" && state === "online") online++
    peer.state = state
  }

  const register = (peer: SimPeer, now: number) => {
    setOnline(peer, "registering")
    peer.session = undefined
    peer.registerSentAt = now
    peer.dueAt = now + config.registerTimeoutMs
    if (peer.nonce !== "") repliesDone.push(peer.nonce)
    peer.early = []
    peer.nonce = randomUUID()
    peer.secret = undefined
    peer.box = config.sealed === true ? Trust.newBoxKeyPair() : undefined
    repliesWanted.push({ nonce: peer.nonce, peerId: peer.id })
    send({
      msg: "register",
      peer_id: peer.id,
      token: config.token,
      server_ip: config.serverIp,
      ...(config.os ? { os: config.os.os, distro: config.os.distro } : {}),
      hostname: peer.id,
      agent_version: config.agentVersion,
      nonce: peer.nonce,
      ...(peer.box === undefined ? {} : { box_key: peer.box.publicKey }),
    })
  }

  /** Like the real peer: half the ceiling plus a random half, the ceiling doubling per attempt. */
  const backOff = (peer: SimPeer, now: number) => {
    peer.attempt++
    const ceiling = Math.min(config.reconnectMaxMs, config.reconnectBaseMs * 2 ** Math.min(peer.attempt, 10))
    setOnline(peer, "waiting")
    peer.session = undefined
    peer.dueAt = now + Math.round(ceiling / 2 + Math.random() * (ceiling / 2))
  }

  const result = (peer: SimPeer, session: string, job: Protocol.Job, now: number): Protocol.Result => ({
    msg: "result",
    ticket: job.ticket,
    peer_id: peer.id,
    token: session,
    result: `simulated: ${job.job.name}`,
    exit_code: 0,
    status: "succeeded",
    started_at: now,
    finished_at: now + config.jobMs,
    truncated: false,
  })

  /** Handles one inbox entry; returns a warning to log, if any. */
  const handle = (peer: SimPeer, payload: string, now: number): string | undefined => {
    const decoded = Protocol.decodeServerMessage(payload)
    if (Result.isFailure(decoded)) {
      counters.malformed++
      return `${peer.id}: ignored a malformed message: ${decoded.failure.message}`
    }
    const message = decoded.success
    const kind = Protocol.serverMessageKind(message)
    if (peer.state === "registering" && (kind === "job" || kind === "shutdown")) {
      if (peer.early.length < MAX_EARLY) peer.early.push(payload)
      return
    }
    switch (kind) {
      case "register_accepted": {
        const m = message as Protocol.RegisterAccepted
        // After a logout (shutdown) or a final refusal an acceptance is old news; so is one that
        // answers another registration in this peer's name.
        if (peer.state !== "registering" && peer.state !== "online") return
        if (m.nonce !== undefined && m.nonce !== peer.nonce) return
        if (peer.box !== undefined) {
          const opened = m.sealed === undefined ? undefined : Trust.unseal(peer.box, m.sealed)
          const token = opened === undefined ? undefined : (JSON.parse(opened) as { token?: unknown }).token
          if (typeof token !== "string") {
            counters.malformed++
            return `${peer.id}: an acceptance whose sealed part does not open`
          }
          peer.secret = token
        }
        counters.accepted++
        if (peer.state === "registering") latency.record(now - peer.registerSentAt)
        setOnline(peer, "online")
        peer.session = m.token
        peer.heartbeatMs = m.heartbeat_ms ?? 5_000
        peer.attempt = 0
        // The first beat lands anywhere in the period, so a storm of logins does not beat in step.
        peer.dueAt = now + Math.floor(Math.random() * peer.heartbeatMs)
        if (!peer.everAccepted) {
          peer.everAccepted = true
          acceptedPeers++
          if (acceptedPeers === config.peers) {
            allAcceptedMs = now - startedAt
            Deferred.doneUnsafe(allAccepted, Effect.succeed(allAcceptedMs))
          }
        }
        // Those of another session are ignored there, as they would have been on arrival.
        for (const early of peer.early.splice(0)) handle(peer, early, now)
        return
      }
      case "register_rejected": {
        const reason = (message as Protocol.RegisterRejected).reason ?? "no reason given"
        if (peer.state === "online") {
          if (reason !== Protocol.RejectReason.sessionExpired) return // a stale answer
          counters.sessionsExpired++
          register(peer, now)
          return
        }
        if (peer.state !== "registering") return
        // Drawn by someone else's registration in this peer's name (a bad token, say): not ours.
        if ((message as Protocol.RegisterRejected).nonce !== peer.nonce) return
        counters.rejected++
        rejectReasons[reason] = (rejectReasons[reason] ?? 0) + 1
        if (Protocol.isRetryableRejection(reason)) {
          backOff(peer, now)
          return
        }
        setOnline(peer, "rejected")
        rejectedPeers++
        Deferred.doneUnsafe(refused, Effect.succeed(reason))
        return
      }
      case "heartbeat":
        return // the server is still there; the fleet does not watch for silence
      case "job": {
        const job = message as Protocol.Job
        if (peer.state !== "online" || job.token !== peer.session) {
          counters.jobsIgnored++
          return
        }
        counters.jobsReceived++
        const answer = result(peer, peer.session, job, now)
        if (config.jobMs <= 0) send(answer)
        else {
          peer.running++
          delayed.push({ at: now + config.jobMs, peer, result: answer })
        }
        return
      }
      case "shutdown": {
        const m = message as Protocol.Shutdown
        if (peer.state !== "online" || m.token !== peer.session) return
        counters.shutdowns++
        // Simulated jobs are not waited for: their results go out with the old session's token.
        send({
          msg: "logout",
          peer_id: peer.id,
          token: m.token,
          reason: Protocol.LogoutReason.serverShutdown,
        })
        backOff(peer, now)
        return
      }
    }
  }

  const flushOnce = Effect.gen(function* () {
    const chunk = outbox.slice(0, MAX_BATCH)
    const sent = yield* transport.sendUplinkBatch(chunk.map((o) => o.payload)).pipe(
      Effect.as(true),
      Effect.catch((e: TransportError) =>
        Effect.logWarning(`could not send to the uplink (${e.message}); retrying`).pipe(
          Effect.andThen(
            Effect.sync(() => {
              counters.sendFailures++
            }),
          ),
          Effect.andThen(Effect.sleep("500 millis")),
          Effect.as(false),
        ),
      ),
    )
    if (!sent) return
    outbox.splice(0, chunk.length)
    for (const { kind } of chunk) {
      if (kind === "register") counters.registrationsSent++
      else if (kind === "heartbeat") counters.heartbeatsSent++
      else if (kind === "result") counters.resultsSent++
      else counters.logoutsSent++
    }
  })

  const fan = yield* transport.inboxFan(config.fan)

  /** Watches the reply streams of new registrations; one that fails is tried again next round. */
  const watchReplies = Effect.gen(function* () {
    if (repliesDone.length > 0) yield* fan.removeReplies(repliesDone.splice(0))
    if (repliesWanted.length === 0) return
    const wanted = repliesWanted.splice(0)
    yield* fan.addReplies(wanted).pipe(
      Effect.catch((e: TransportError) =>
        Effect.sync(() => {
          repliesWanted.unshift(...wanted)
          counters.readFailures++
        }).pipe(Effect.andThen(Effect.logWarning(`cannot watch replies (${e.message}); retrying`))),
      ),
    )
  })

  // What must arrive is kept until Redis takes it, in order.
  const flusher = Effect.gen(function* () {
    while (true) {
      yield* watchReplies
      while (outbox.length > 0) yield* flushOnce
      // Woken by the next message to send, not by a timer: no latency added, no idle polling.
      yield* Queue.take(wake).pipe(Effect.timeoutOption(FLUSH_IDLE_MS))
    }
  })

  const reader = Effect.gen(function* () {
    while (true) {
      const batches = yield* fan.take.pipe(
        Effect.catch((e: TransportError) =>
          Effect.logWarning(`cannot read the inboxes (${e.message}); retrying`).pipe(
            Effect.andThen(
              Effect.sync(() => {
                counters.readFailures++
              }),
            ),
            Effect.as([]),
          ),
        ),
      )
      const now = Date.now()
      const handled: Array<readonly [string, string]> = []
      for (const { peerId, entries, nonce } of batches) {
        const peer = byId.get(peerId)
        if (!peer) continue
        for (const entry of entries) {
          const warning = handle(peer, entry.payload, now)
          if (warning) yield* Effect.logWarning(warning)
        }
        // A reply stream is not trimmed (it expires); it is let go once it has answered.
        if (nonce !== undefined) {
          if (nonce !== peer.nonce || peer.state !== "registering") repliesDone.push(nonce)
          continue
        }
        const last = entries.at(-1)
        if (last) handled.push([peerId, last.id])
      }
      yield* transport.trimInboxes(handled).pipe(Effect.ignore)
    }
  })

  /** One walk over the fleet per SCAN_MS: registrations and heartbeats that are due. */
  const scan = (now: number) => {
    for (const peer of peers) {
      if (peer.dueAt > now) continue
      switch (peer.state) {
        case "waiting":
          register(peer, now)
          break
        case "registering":
          counters.registrationsResent++
          register(peer, now)
          break
        case "online":
          send({ msg: "heartbeat", peer_id: peer.id, token: peer.session!, running: peer.running })
          peer.dueAt = now + peer.heartbeatMs
          break
      }
    }
  }

  const timers = Effect.gen(function* () {
    let lastTick = emptyCounters()
    let nextTick = startedAt + 1_000
    while (true) {
      const now = Date.now()
      if (!stopped) scan(now)
      if (now >= nextTick) {
        const snapshot = { ...counters }
        ticks.push({
          t: Math.round((nextTick - startedAt) / 1_000),
          online,
          delta: diffCounters(snapshot, lastTick),
        })
        lastTick = snapshot
        nextTick += 1_000
      }
      yield* Effect.sleep(SCAN_MS)
    }
  })

  const jobClock = Effect.gen(function* () {
    while (true) {
      const now = Date.now()
      let due = 0
      while (due < delayed.length && delayed[due]!.at <= now) {
        const { peer, result } = delayed[due]!
        peer.running--
        send(result)
        due++
      }
      if (due > 0) delayed.splice(0, due)
      yield* Effect.sleep(10)
    }
  })

  // The inboxes are watched before any registration goes out, so no answer is missed.
  yield* fan.add(peers.map((p) => p.id))
  yield* Effect.forkScoped(reader)
  yield* Effect.forkScoped(flusher)
  yield* Effect.forkScoped(timers)
  if (config.jobMs > 0) yield* Effect.forkScoped(jobClock)

  let cursor = 0
  const report = (): FleetReport => {
    return {
      runId: config.runId,
      peers: config.peers,
      online,
      acceptedPeers,
      rejectedPeers,
      allAcceptedMs,
      elapsedMs: Date.now() - startedAt,
      counters: { ...counters },
      rejectReasons: { ...rejectReasons },
      registerLatency: latency.summary(),
      perSecond: [...ticks],
    }
  }

  return {
    peerIds: peers.map((p) => p.id) as ReadonlyArray<string>,
    counters: counters as Readonly<Counters>,
    /** Succeeds with the time from the start once every peer has been accepted once. */
    allAccepted: Deferred.await(allAccepted),
    /** Succeeds with the reason when a peer is refused for good (an unknown token, say). */
    refused: Deferred.await(refused),
    online: () => online,
    /** The logged-in peers in turn, for spreading work over them; undefined when none is. */
    nextOnline: (): string | undefined => {
      for (let i = 0; i < peers.length; i++) {
        const peer = peers[cursor]!
        cursor = (cursor + 1) % peers.length
        if (peer.state === "online") return peer.id
      }
      return undefined
    },
    /** Counts a ticket handed to the submitter (or a failure to hand it). */
    countSubmission: (ok: boolean) => {
      if (ok) counters.ticketsSubmitted++
      else counters.submitFailures++
    },
    report,
    /**
     * Stops registering and heartbeating, logs every session out with `reason`, and waits (up to
     * `waitMs`) until the uplink has taken everything queued.
     */
    stop: (reason: string, waitMs = 10_000) =>
      Effect.gen(function* () {
        stopped = true
        const now = Date.now()
        // Results of jobs still "running" first: after the logout their session is gone.
        for (const { result } of delayed.splice(0)) send(result)
        for (const peer of peers) {
          if (peer.state === "online" && peer.session)
            send({ msg: "logout", peer_id: peer.id, token: peer.session, reason })
          setOnline(peer, "stopped")
        }
        const deadline = now + waitMs
        while (outbox.length > 0 && Date.now() < deadline) yield* Effect.sleep(FLUSH_MS)
      }),
  }
})

export type SimulatedFleet = Effect.Success<ReturnType<typeof makeSimulatedFleet>>
