import { randomBytes } from "node:crypto"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "@effect/vitest"
import { makeKeys, peerAclRules, TransportRedis } from "@picus/core"
import { deleteKeysWithPrefix, eventually, testKeyPrefix, testRedisUrl } from "@picus/core/testing"
import { Effect } from "effect"
import { Redis } from "ioredis"
import { makeAgent } from "../src/Agent.ts"
import { openStateFile } from "../src/state.ts"
import { makeFakeServer, sessionExpired } from "./support/fakeServer.ts"

// A session whose acceptance brings a Redis user of its own, on the shared Redis: the peer reads
// its inbox and sends its messages as that user, and closes that connection when the session ends.
// The user is this test's own (named under its key prefix), limited to its keys, and removed after.

const url = testRedisUrl()

const withSessionUser = <A, E, R>(
  test: (user: { name: string; password: string; prefix: string }) => Effect.Effect<A, E, R>,
) =>
  Effect.gen(function* () {
    const prefix = testKeyPrefix()
    const name = `${prefix}:peer:p1`
    const password = randomBytes(24).toString("base64url")
    const admin = new Redis(url)
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        await admin.call("ACL", "DELUSER", name)
        admin.disconnect()
        await deleteKeysWithPrefix(url, prefix)
      }),
    )
    yield* Effect.promise(() =>
      admin.call(
        "ACL",
        "SETUSER",
        name,
        "reset",
        "on",
        `>${password}`,
        // The rules the server gives a peer's session user: the peer must work under them.
        ...peerAclRules(makeKeys(prefix), "p1"),
      ),
    )
    return yield* test({ name, password, prefix }).pipe(
      Effect.provide(TransportRedis.layerRedis({ url, prefix })),
    )
  }).pipe(Effect.scoped)

/** How many connections Redis has open for this user. */
const connectionsOf = (name: string) =>
  Effect.promise(async () => {
    const admin = new Redis(url)
    try {
      const list = (await admin.call("CLIENT", "LIST")) as string
      return list.split("\n").filter((line) => line.includes(`user=${name} `)).length
    } finally {
      admin.disconnect()
    }
  })

const agentWith = (prefix: string, clusterKey: string, serverSilenceMs = 60_000) =>
  makeAgent({
    token: "enroll",
    clusterKey: { _tag: "Key", key: clusterKey },
    sessionTransport: ({ user, password }) =>
      TransportRedis.layerRedis({ url, username: user, password, restrictedLogin: true, prefix }),
    serverIp: "127.0.0.1",
    os: { os: "linux", distro: "debian", hostname: "h" },
    state: openStateFile(mkdtempSync(join(tmpdir(), "picus-session-user-")), "p1"),
    agentVersion: "test",
    concurrency: 2,
    outputCapBytes: 4_096,
    defaultTimeoutMs: 5_000,
    exitOnShutdown: true,
    registerTimeoutMs: 5_000,
    reconnectBaseMs: 50,
    reconnectMaxMs: 100,
    serverSilenceMs,
    say: () => Effect.void,
  })

describe("a session with a Redis user of its own", () => {
  it.live("runs its jobs over that user's connection, and closes it when the session ends", () =>
    withSessionUser(({ name, password, prefix }) =>
      Effect.gen(function* () {
        const server = yield* makeFakeServer()
        const agent = yield* agentWith(prefix, server.cluster.publicKey)
        yield* Effect.forkScoped(agent.run)
        const { register } = yield* server.nextRegistration
        assert.strictEqual(yield* connectionsOf(name), 0, "registering is not done as the session's user")
        const s = yield* server.accept(register, {
          credentials: { redis_user: name, redis_password: password },
        })
        yield* server.toPeer(server.job("1", "echo over-own-user", s))
        const [result] = yield* server.results(1)
        assert.strictEqual(result?.result, "over-own-user\n")
        assert.isAtLeast(yield* connectionsOf(name), 1)
        assert.deepStrictEqual(
          server.macs().filter((m) => m.check !== "valid"),
          [],
        )

        yield* server.toPeer(sessionExpired)
        yield* server.nextRegistration
        yield* eventually(
          connectionsOf(name).pipe(Effect.map((n) => (n === 0 ? true : undefined))),
          "the session's connections closed",
        )
      }),
    ),
  )

  it.live(
    "registers again, over the enrollment connection, once Redis refuses the session's user",
    () =>
      withSessionUser(({ name, password, prefix }) =>
        Effect.gen(function* () {
          const server = yield* makeFakeServer()
          const agent = yield* agentWith(prefix, server.cluster.publicKey)
          yield* Effect.forkScoped(agent.run)
          const { register } = yield* server.nextRegistration
          const s = yield* server.accept(register, {
            credentials: { redis_user: name, redis_password: password },
          })
          yield* server.toPeer(server.job("1", "echo one", s))
          yield* server.results(1)
          // What the server does when a session ends without a word to the peer (revoked, say).
          const admin = new Redis(url)
          yield* Effect.promise(() => admin.call("ACL", "SETUSER", name, "off"))
          yield* Effect.promise(() => admin.call("CLIENT", "KILL", "USER", name))
          admin.disconnect()
          const started = Date.now()
          const { register: again } = yield* server.nextRegistration
          assert.isBelow(Date.now() - started, 15_000, "long before the 60 s of server silence")
          const s2 = yield* server.accept(again)
          yield* server.toPeer(server.job("2", "echo two", s2))
          const [result] = yield* server.results(1)
          assert.strictEqual(result?.result, "two\n")
        }),
      ),
    30_000,
  )
})
