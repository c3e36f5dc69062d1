import { randomUUID } from "node:crypto"
import { type Keys, Protocol, Trust } from "@picus/core"
import { Result } from "effect"
import { Redis } from "ioredis"
import { sleep } from "../clock.ts"

/**
 * A peer that speaks the signed dialect with the project's own primitives, as the real peer does: it
 * registers with an identity key (signed, with nonce, ts, peer_key, box_key), reads its answer in its
 * reply stream, unseals its session token and Redis login, then heartbeats and answers its jobs over
 * that login, every message MACed. The fuzz forges in its name; its session must come through whole.
 */

/** A Redis connection as `user`: commands fail at once, no ready check (a peer may not run INFO). */
export const loginAs = (url: string, user: string, password: string): Redis => {
  const u = new URL(url)
  u.username = encodeURIComponent(user)
  u.password = encodeURIComponent(password)
  const client = new Redis(u.toString(), {
    maxRetriesPerRequest: 1,
    enableReadyCheck: false,
    lazyConnect: true,
  })
  client.on("error", () => {})
  return client
}

/** What a signed peer saw of its session: all but `jobs`, `results` and `heartbeats` should stay 0. */
export interface SignedCounts {
  heartbeats: number
  jobs: number
  results: number
  /** Jobs for a ticket it had answered already (sent again: answered again). */
  jobsAgain: number
  /** A `session_expired` in its inbox after its session opened: the server forgot the session. */
  expired: number
  shutdowns: number
  /** Inbox entries not validly signed by the cluster key. */
  misSigned: number
  /** Jobs or heartbeats naming another session. */
  otherSession: number
  /** Sends or reads that failed. */
  errors: number
}

export interface SignedPeer {
  readonly peerId: string
  readonly sessionId: string
  readonly sessionToken: string
  readonly identity: Trust.SigningKey
  /** The signed registration exactly as it was sent, for replaying it. */
  readonly registration: string
  /** Whether the session came with a Redis user of its own (the server runs with Redis users). */
  readonly ownRedisUser: boolean
  readonly counts: SignedCounts
  readonly stop: () => Promise<void>
}

const firstEntry = (reply: unknown): { id: string; payload: string } | undefined => {
  const entry = (reply as Array<[string, Array<[string, Array<string>]>]> | null)?.[0]?.[1]?.[0]
  const payload = entry?.[1]?.[1]
  return entry === undefined || payload === undefined ? undefined : { id: entry[0], payload }
}

/**
 * Registers `peerId` signed by a new identity key over `enroller` (a login that may RPUSH the intake
 * and XREAD reply streams), then runs its session until `stop`. Fails if it is not accepted.
 */
export const startSignedPeer = async (options: {
  readonly redisUrl: string
  readonly keys: Keys
  readonly enroller: Redis
  readonly token: string
  readonly clusterPublicKey: string
  readonly peerId: string
  /** Called with each payload it sends in its session. */
  readonly onSend?: (payload: string) => void
}): Promise<SignedPeer> => {
  const { keys, enroller, peerId, clusterPublicKey } = options
  const identity = Trust.signingKeyOf(Trust.newPrivateKey())!
  const box = Trust.newBoxKeyPair()
  const nonce = randomUUID()
  const registration = Trust.signPayload(
    Protocol.encodeMessage({
      msg: "register",
      peer_id: peerId,
      token: options.token,
      server_ip: "127.0.0.1",
      os: "linux",
      distro: "fuzz-signed",
      agent_version: "fuzz-signed",
      nonce,
      ts: Date.now(),
      peer_key: identity.publicKey,
      box_key: box.publicKey,
    }),
    identity,
  )
  await enroller.rpush(keys.uplinkIntake, registration)
  const answer = firstEntry(await enroller.xread("BLOCK", 30_000, "STREAMS", keys.reply(nonce), "0-0"))
  if (answer === undefined) throw new Error(`${peerId}: no answer to its registration within 30 s`)
  if (Trust.checkSignature(answer.payload, clusterPublicKey) !== "valid")
    throw new Error(`${peerId}: the answer to its registration is not signed by the cluster key`)
  const decoded = Protocol.decodeServerMessage(answer.payload)
  if (Result.isFailure(decoded)) throw new Error(`${peerId}: ${decoded.failure.message}`)
  const accepted = decoded.success
  if (!Protocol.isRegisterAccepted(accepted) || accepted.sealed === undefined)
    throw new Error(`${peerId}: registration refused: ${(accepted as Protocol.RegisterRejected).reason}`)
  const opened = Trust.unseal(box, accepted.sealed)
  if (opened === undefined) throw new Error(`${peerId}: cannot unseal its acceptance`)
  const sealed = JSON.parse(opened) as { token: string; redis_user?: string; redis_password?: string }
  const sessionId = accepted.token
  const sessionToken = sealed.token

  // Its session's own login when it has one (it may RPUSH the intake and read its inbox), else the
  // enroller's connection settings (open mode).
  const login = () =>
    sealed.redis_user !== undefined && sealed.redis_password !== undefined
      ? loginAs(options.redisUrl, sealed.redis_user, sealed.redis_password)
      : new Redis(options.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 })
  const writer = login()
  const reader = login()
  await writer.connect()
  await reader.connect()

  const counts: SignedCounts = {
    heartbeats: 0,
    jobs: 0,
    results: 0,
    jobsAgain: 0,
    expired: 0,
    shutdowns: 0,
    misSigned: 0,
    otherSession: 0,
    errors: 0,
  }
  const answered = new Map<string, string>()
  let stopped = false

  const send = async (message: Protocol.PeerMessage): Promise<string> => {
    const payload = Trust.macPayload(Protocol.encodeMessage(message), sessionToken)
    await writer.rpush(keys.uplinkIntake, payload)
    options.onSend?.(payload)
    return payload
  }

  const heartbeatMs = accepted.heartbeat_ms ?? 5_000
  const beating = (async () => {
    while (!stopped) {
      await send({ msg: "heartbeat", peer_id: peerId, token: sessionId, running: 0 }).then(
        () => counts.heartbeats++,
        () => counts.errors++,
      )
      for (let waited = 0; waited < heartbeatMs && !stopped; waited += 100) await sleep(100)
    }
  })()

  const handle = async (payload: string): Promise<void> => {
    // As the real peer: the session's own messages carry the server's MAC under its token, anything
    // else the cluster key's signature.
    const authentic =
      Trust.checkMacFromServer(payload, sessionToken) === "valid" ||
      Trust.checkSignature(payload, clusterPublicKey) === "valid"
    if (!authentic) {
      counts.misSigned++
      return
    }
    const message = Protocol.decodeServerMessage(payload)
    if (Result.isFailure(message)) {
      counts.misSigned++
      return
    }
    const m = message.success
    if (Protocol.isJob(m)) {
      if (m.token !== sessionId || m.peer_id !== peerId) {
        counts.otherSession++
        return
      }
      const again = answered.get(m.ticket)
      if (again !== undefined) {
        counts.jobsAgain++
        await writer.rpush(keys.uplinkIntake, again)
        return
      }
      counts.jobs++
      const now = Date.now()
      const result = await send({
        msg: "result",
        ticket: m.ticket,
        peer_id: peerId,
        token: sessionId,
        result: `signed: ${m.job.name}`,
        exit_code: 0,
        status: "succeeded",
        started_at: now,
        finished_at: now,
        truncated: false,
      })
      answered.set(m.ticket, result)
      counts.results++
    } else if (Protocol.isShutdown(m)) counts.shutdowns++
    else if (Protocol.isRegisterRejected(m)) {
      // Rejections of registrations made in its name carry their nonce or none: not its own answer.
      if (m.reason === Protocol.RejectReason.sessionExpired) counts.expired++
    } else if (m.msg === "heartbeat" && m.token !== sessionId) counts.otherSession++
  }

  const inbox = keys.peerInbox(peerId)
  const reading = (async () => {
    let cursor = "0-0"
    while (!stopped) {
      try {
        const reply = (await reader.xread("COUNT", 100, "BLOCK", 500, "STREAMS", inbox, cursor)) as Array<
          [string, Array<[string, Array<string>]>]
        > | null
        const entries = reply?.[0]?.[1] ?? []
        for (const [id, fields] of entries) {
          cursor = id
          const payload = fields[1]
          if (payload !== undefined) await handle(payload)
        }
        // What it has handled goes, as the real peer trims its inbox.
        if (entries.length > 0) await reader.xtrim(inbox, "MINID", cursor)
      } catch {
        if (stopped) break
        counts.errors++
        await sleep(200)
      }
    }
  })()

  return {
    peerId,
    sessionId,
    sessionToken,
    identity,
    registration,
    ownRedisUser: sealed.redis_user !== undefined,
    counts,
    stop: async () => {
      stopped = true
      // A login the server dropped (its session replaced) may hang its commands: cut them short.
      const loops = Promise.all([beating, reading])
      await Promise.race([loops, sleep(2_000)])
      writer.disconnect()
      reader.disconnect()
      // A command of a connection closed while reconnecting may never settle: not waited for.
      await Promise.race([loops, sleep(1_000)])
    },
  }
}
