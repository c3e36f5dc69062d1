import { randomUUID } from "node:crypto"
import { connect } from "node:net"
import { makeKeys, Protocol, redisPasswordOf, Trust } from "@picus/core"
import { Redis } from "ioredis"

/**
 * An attacker that speaks the protocol with the project's own primitives and real Redis logins: it
 * enrolls a peer of its own with a real enrollment string, and then tries what it should not be able to.
 */

/** A Redis connection as `user`; commands fail at once instead of retrying. */
export const loginAs = (url: string, user: string, password: string): Redis => {
  const u = new URL(url)
  u.username = encodeURIComponent(user)
  u.password = encodeURIComponent(password)
  const client = new Redis(u.toString(), {
    maxRetriesPerRequest: 0,
    enableReadyCheck: false,
    retryStrategy: () => null,
    lazyConnect: true,
  })
  client.on("error", () => {})
  return client
}

/** "OK" when Redis carried the command out, else the reply's error code (NOPERM, WRONGPASS, ...). */
export const attempt = async (
  client: Redis,
  ...command: [string, ...Array<string | number>]
): Promise<string> => {
  try {
    if (client.status === "wait") await client.connect()
    await client.call(...command)
    return "OK"
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    return message.split(" ", 1)[0] ?? message
  }
}

/** The success of an Effect Result, or a throw with its failure (e2e has no Effect of its own). */
const successOf = <A>(result: {
  readonly _tag: string
  readonly success?: A
  readonly failure?: unknown
}): A => {
  if (result._tag !== "Success") throw new Error(String(result.failure))
  return result.success as A
}

/**
 * What Redis answers to `AUTH user password` on a fresh connection: "OK" or its error code. Said over
 * a bare socket, so no client library sends anything first.
 */
export const authAs = (url: string, user: string, password: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const u = new URL(url)
    const socket = connect(Number(u.port), u.hostname)
    const arg = (text: string) => `$${Buffer.byteLength(text)}\r\n${text}\r\n`
    socket.once("error", reject)
    socket.once("connect", () => socket.write(`*3\r\n${arg("AUTH")}${arg(user)}${arg(password)}`))
    socket.once("data", (data) => {
      socket.destroy()
      const line = data.toString().split("\r\n")[0] ?? ""
      resolve(line === "+OK" ? "OK" : (line.slice(1).split(" ", 1)[0] ?? line))
    })
  })

export interface Enrolled {
  readonly peerId: string
  readonly sessionId: string
  readonly sessionToken: string
  readonly redisUser: string | undefined
  readonly redisPassword: string | undefined
  /** The signed registration as it was sent (for replaying it). */
  readonly registration: string
  readonly identity: Trust.SigningKey
}

/** Enrolls `peerId` the way a real peer does, over the enrollment user; fails if not accepted. */
export const enroll = async (options: {
  readonly redisUrl: string
  readonly prefix: string
  readonly enrollment: string
  readonly peerId: string
  /** Sign with this identity (default: a new one). */
  readonly identity?: Trust.SigningKey
}): Promise<Enrolled | { readonly rejected: string }> => {
  const enrollment = successOf(Trust.decodeEnrollment(options.enrollment))
  const keys = makeKeys(options.prefix)
  const identity = options.identity ?? Trust.signingKeyOf(Trust.newPrivateKey())!
  const box = Trust.newBoxKeyPair()
  const nonce = randomUUID()
  const registration = Trust.signPayload(
    Protocol.encodeMessage({
      msg: "register",
      peer_id: options.peerId,
      token: enrollment.token,
      server_ip: "127.0.0.1",
      os: "linux",
      distro: "attacker",
      nonce,
      ts: Date.now(),
      peer_key: identity.publicKey,
      box_key: box.publicKey,
    }),
    identity,
  )
  const client = loginAs(
    options.redisUrl,
    enrollment.redisUser ?? "default",
    redisPasswordOf(enrollment.token),
  )
  try {
    await client.connect()
    await client.rpush(keys.uplinkIntake, registration)
    const reply = (await client.xread("BLOCK", 10_000, "STREAMS", keys.reply(nonce), "0-0")) as Array<
      [string, Array<[string, Array<string>]>]
    > | null
    const payload = reply?.[0]?.[1]?.[0]?.[1]?.[1]
    if (payload === undefined) throw new Error("no answer to the registration within 10 s")
    if (Trust.checkSignature(payload, enrollment.clusterKey) !== "valid") throw new Error("unsigned answer")
    const answer = successOf(Protocol.decodeServerMessage(payload))
    if (!Protocol.isRegisterAccepted(answer)) {
      return { rejected: (answer as Protocol.RegisterRejected).reason ?? "rejected" }
    }
    const opened = JSON.parse(Trust.unseal(box, answer.sealed!)!) as {
      token: string
      redis_user?: string
      redis_password?: string
    }
    return {
      peerId: options.peerId,
      sessionId: answer.token,
      sessionToken: opened.token,
      redisUser: opened.redis_user,
      redisPassword: opened.redis_password,
      registration,
      identity,
    }
  } finally {
    client.disconnect()
  }
}
