import { join } from "node:path"
import { Redis } from "ioredis"
import { afterEach, beforeEach, describe, expect, it } from "vitest"
import { detectOs } from "../packages/peer/src/osInfo.ts"
import { makeWorld, type World, writeCatalog } from "./support/env.ts"
import { freePort } from "./support/ports.ts"
import { eventually, killAll, runPicus, startPicus } from "./support/processes.ts"
import { startPrivateRedis } from "./support/redis.ts"

// The JSON API of a real server (real PostgreSQL and Redis) with a real peer: operator tokens made
// with the command line, what each scope may do, and the shapes of the answers.

const here = detectOs()
let world: World
beforeEach(async () => {
  world = await makeWorld({ PICUS_HEARTBEAT_MS: "300", PICUS_GRACE_MS: "1500", PICUS_DRAIN_MS: "1000" })
})
afterEach(async () => {
  await killAll()
  await world.close()
})

const operatorToken = async (name: string, scope: string) => {
  const created = await runPicus(
    ["operator-token", "create", "--name", name, "--scope", scope, "--json"],
    world.env,
  )
  expect(created.code, created.output).toBe(0)
  const out = JSON.parse(created.stdout) as { token: string; id: number; scope: string }
  expect(out.scope).toBe(scope)
  return out
}

describe("the JSON API", () => {
  it("refuses requests without a valid token, lets read tokens read and admin tokens submit", async () => {
    const port = await freePort()
    const base = `http://127.0.0.1:${port}`
    const call = async (path: string, token?: string, init: RequestInit = {}) => {
      const response = await fetch(`${base}${path}`, {
        ...init,
        headers: {
          ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
          ...(init.body === undefined ? {} : { "content-type": "application/json" }),
        },
      })
      const text = await response.text()
      return { status: response.status, body: text.startsWith("{") ? JSON.parse(text) : text }
    }
    const reader = await operatorToken("grafana", "read")
    const admin = await operatorToken("ops", "admin")
    const revoked = await operatorToken("old", "read")
    const revoke = await runPicus(["operator-token", "revoke", String(revoked.id)], world.env)
    expect(revoke.code, revoke.output).toBe(0)
    const listed = await runPicus(["operator-token", "list", "--json"], world.env)
    expect(listed.output).not.toContain(reader.token)
    expect(JSON.parse(listed.stdout)).toHaveLength(3)
    const bad = await runPicus(["operator-token", "create", "--scope", "root"], world.env)
    expect(bad.code).toBe(2)
    expect(bad.output).toContain("--scope takes read or admin")

    // An enrollment token is not an operator token.
    const enrollment = await runPicus(["token", "create", "--name", "api", "--json"], world.env)
    const { token: peerToken } = JSON.parse(enrollment.stdout) as { token: string }

    const catalog = writeCatalog(world.dir, [
      { id: "hello", name: "Hello", os: here.os, distro: here.distro, command: "echo hello" },
    ])
    const server = startPicus("server", ["server", "--http", `127.0.0.1:${port}`], {
      ...world.env,
      PICUS_CATALOG: catalog,
    })
    await server.waitForLine(/serving/)
    const peer = startPicus(
      "peer",
      ["peer", "--peer-id", "api-1", "--label", "role=web", "--state-dir", join(world.dir, "api-1")],
      { ...world.env, PICUS_TOKEN: peerToken },
    )
    await peer.waitForLine(/registered as api-1/)

    // 401 for every /api/ route without a valid token; the probes stay open.
    for (const path of ["/api/peers", "/api/sessions", "/api/runs", "/api/events", "/api/nothing"]) {
      expect((await call(path)).status, path).toBe(401)
      expect((await call(path, "picusop_not-a-token")).status, path).toBe(401)
      expect((await call(path, revoked.token)).status, path).toBe(401)
      expect((await call(path, peerToken)).status, path).toBe(401)
    }
    expect((await call("/api/peers")).body.error).toContain("Authorization: Bearer")
    expect((await call("/healthz")).status).toBe(200)
    expect((await call("/")).status).toBe(200)

    expect((await call("/api/me", reader.token)).body).toEqual({
      name: "grafana",
      scope: "read",
      token_id: reader.id,
    })
    const peers = await eventually("the peer online", async () => {
      const { body } = await call("/api/peers", reader.token)
      return body.peers?.[0]?.online === true ? body.peers : undefined
    })
    expect(peers).toHaveLength(1)
    expect(peers[0]).toMatchObject({
      peer_id: "api-1",
      os: here.os,
      distro: here.distro,
      labels: { role: "web" },
      online: true,
    })
    expect(typeof peers[0].held_by).toBe("string")
    expect(typeof peers[0].last_seen_at).toBe("number")

    const sessions = (await call("/api/sessions?peer_id=api-1", reader.token)).body.sessions
    expect(sessions).toHaveLength(1)
    expect(sessions[0]).toMatchObject({ peer_id: "api-1", logout_at: null, logout_reason: null })
    expect(typeof sessions[0].login_at).toBe("number")

    // Bad input: 400 naming the field.
    const badLimit = await call("/api/sessions?limit=lots", reader.token)
    expect(badLimit.status).toBe(400)
    expect(badLimit.body.field).toBe("limit")

    // The read token may not submit; the admin token may, and the run ends on the peer.
    const submit = { command: "echo from-the-api", target: { peers: ["api-1"] } }
    const refused = await call("/api/runs", reader.token, { method: "POST", body: JSON.stringify(submit) })
    expect(refused.status).toBe(403)
    expect(refused.body.error).toContain("admin")
    const noTarget = await call("/api/runs", admin.token, {
      method: "POST",
      body: JSON.stringify({ command: "echo x", target: {} }),
    })
    expect(noTarget).toMatchObject({ status: 400, body: { field: "target" } })
    const wrongType = await call("/api/runs", admin.token, {
      method: "POST",
      body: JSON.stringify({ command: 42, target: { all: true } }),
    })
    expect(wrongType).toMatchObject({ status: 400, body: { field: "command" } })
    const notJson = await call("/api/runs", admin.token, { method: "POST", body: "{nope" })
    expect(notJson.status).toBe(400)

    const started = await call("/api/runs", admin.token, { method: "POST", body: JSON.stringify(submit) })
    expect(started.status, JSON.stringify(started.body)).toBe(201)
    expect(started.body).toMatchObject({ tickets: 1, peers: ["api-1"], skipped: [] })
    const runId = started.body.run_id as string
    const done = await eventually("the run's ticket to succeed", async () => {
      const { body } = await call(`/api/runs/${runId}`, reader.token)
      return body.tickets?.[0]?.state === "succeeded" ? body : undefined
    })
    expect(done.run).toMatchObject({ run_id: runId, command: "echo from-the-api", created_by: "api:ops" })
    expect(done.tickets[0]).toMatchObject({ peer_id: "api-1", exit_code: 0, output: "from-the-api" })
    const ticket = await call(`/api/tickets/${done.tickets[0].ticket}`, reader.token)
    expect(ticket.body.ticket).toMatchObject({ state: "succeeded", run_id: runId, output: "from-the-api\n" })
    expect((await call("/api/tickets/999999999", reader.token)).status).toBe(404)
    expect((await call("/api/runs", reader.token)).body.runs[0]).toMatchObject({
      run_id: runId,
      counts: { succeeded: 1 },
    })
    expect((await call("/api/tickets/open", reader.token)).body.tickets).toEqual([])

    // Cancel: admin only; a running job is stopped on its peer and its ticket ends cancelled.
    const long = await call("/api/runs", admin.token, {
      method: "POST",
      body: JSON.stringify({ command: "sleep 20", target: { peers: ["api-1"] } }),
    })
    expect(long.status).toBe(201)
    const longRun = long.body.run_id as string
    const running = await eventually("the long job delivered", async () => {
      const { body } = await call(`/api/tickets/open?run_id=${longRun}`, reader.token)
      return body.tickets?.[0]?.state === "delivered" ? body.tickets[0] : undefined
    })
    const notAdmin = await call(`/api/runs/${longRun}/cancel`, reader.token, { method: "POST", body: "{}" })
    expect(notAdmin.status).toBe(403)
    const badReason = await call(`/api/runs/${longRun}/cancel`, admin.token, {
      method: "POST",
      body: JSON.stringify({ reason: 7 }),
    })
    expect(badReason).toMatchObject({ status: 400, body: { field: "reason" } })
    expect((await call("/api/runs/r999999/cancel", admin.token, { method: "POST", body: "{}" })).status).toBe(
      404,
    )
    const cancelled = await call(`/api/runs/${longRun}/cancel`, admin.token, {
      method: "POST",
      body: JSON.stringify({ reason: "wrong command" }),
    })
    expect(cancelled.status, JSON.stringify(cancelled.body)).toBe(200)
    expect(cancelled.body.outcomes).toEqual([
      { ticket: running.ticket, outcome: "requested", peer_id: "api-1" },
    ])
    const ended = await eventually("the long job cancelled", async () => {
      const { body } = await call(`/api/tickets/${running.ticket}`, reader.token)
      return body.ticket?.state === "cancelled" ? body.ticket : undefined
    })
    expect(ended.close_reason).toContain("wrong command")
    const again = await call(`/api/tickets/${running.ticket}/cancel`, admin.token, { method: "POST" })
    expect(again.body.outcomes, JSON.stringify(again)).toEqual([
      { ticket: running.ticket, outcome: "closed", peer_id: "api-1", state: "cancelled" },
    ])

    // The event stream: the peer's logout arrives as a feed event.
    const events = await fetch(`${base}/api/events`, { headers: { authorization: `Bearer ${reader.token}` } })
    expect(events.status).toBe(200)
    expect(events.headers.get("content-type")).toContain("text/event-stream")
    const reading = events.body!.getReader()
    const decoder = new TextDecoder()
    let buffer = ""
    const seen: Array<Record<string, unknown>> = []
    // Reads the stream until an event matches, for at most `ms` (a read may wait for the keep-alive).
    const until = async (match: (event: Record<string, unknown>) => boolean, ms: number) => {
      const deadline = Date.now() + ms
      for (;;) {
        const found = seen.find(match)
        if (found !== undefined) return found
        const left = deadline - Date.now()
        if (left <= 0) return undefined
        const chunk = await Promise.race([
          reading.read(),
          new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), left)),
        ])
        if (chunk === undefined) continue
        if (chunk.done) throw new Error("the stream ended")
        buffer += decoder.decode(chunk.value, { stream: true })
        const frames = buffer.split("\n\n")
        buffer = frames.pop() ?? ""
        for (const frame of frames)
          for (const line of frame.split("\n"))
            if (line.startsWith("data: ")) seen.push(JSON.parse(line.slice(6)) as Record<string, unknown>)
      }
    }
    // The feed is lossy while a subscription starts: a job's result seen on the stream shows it is heard.
    let heard: Record<string, unknown> | undefined
    for (let attempt = 0; attempt < 10 && heard === undefined; attempt++) {
      const probe = await call("/api/runs", admin.token, {
        method: "POST",
        body: JSON.stringify({ command: "echo probe", target: { peers: ["api-1"] } }),
      })
      expect(probe.status).toBe(201)
      heard = await until((e) => e.event === "result" && e.name === "echo probe", 3_000)
    }
    expect(heard).toMatchObject({ peer_id: "api-1", status: "succeeded", first_line: "probe" })
    peer.signalGroup("SIGINT")
    await peer.exited
    const loggedOut = await until((e) => e.event === "logged_out", 20_000)
    expect(loggedOut).toMatchObject({ peer_id: "api-1", reason: "peer_shutdown" })
    await reading.cancel()

    const loggedOff = await eventually("the session's logout", async () => {
      const { body } = await call("/api/sessions", reader.token)
      return body.sessions[0]?.logout_reason === "peer_shutdown" ? body.sessions[0] : undefined
    })
    expect(loggedOff.duration_ms).toBeGreaterThan(0)
    expect(server.output()).not.toContain(reader.token)
    expect(server.output()).not.toContain(admin.token)
    server.signalGroup("SIGINT")
    expect(await server.exited).toBe(0)
  })

  it("serves many event streams on one Redis subscription, closed after the last", async () => {
    // A Redis of its own, so that its count of connections is this server's alone.
    const redis = await startPrivateRedis({ persistent: false })
    const admin = new Redis(redis.url)
    try {
      const env = { ...world.env, REDIS_URL: redis.url }
      const port = await freePort()
      const server = startPicus("server", ["server", "--http", `127.0.0.1:${port}`, "--redis-users", "off"], {
        ...env,
        PICUS_CATALOG: writeCatalog(world.dir, []),
      })
      await server.waitForLine(/serving/)
      const created = await runPicus(
        ["operator-token", "create", "--name", "watch", "--scope", "read", "--json"],
        env,
      )
      expect(created.code, created.output).toBe(0)
      const { token } = JSON.parse(created.stdout) as { token: string }
      const clients = async () => {
        const info = await admin.info("clients")
        return Number(/connected_clients:(\d+)/.exec(info)?.[1])
      }
      const before = await clients()

      // Five streams, each reading until it has seen an event published after all five opened.
      const streams = await Promise.all(
        Array.from({ length: 5 }, async () => {
          const abort = new AbortController()
          const response = await fetch(`http://127.0.0.1:${port}/api/events`, {
            headers: { authorization: `Bearer ${token}` },
            signal: abort.signal,
          })
          expect(response.status).toBe(200)
          const reader = response.body!.getReader()
          let text = ""
          const read = async (until: (text: string) => boolean) => {
            while (!until(text)) {
              const { value, done } = await reader.read()
              if (done) throw new Error(`the stream ended:\n${text}`)
              text += new TextDecoder().decode(value)
            }
          }
          await read((t) => t.includes(": connected"))
          return { read, abort }
        }),
      )
      const event = { event: "shutdown", at: Date.now(), server_id: "probe", reason: "probe" }
      // Published until every stream heard it (each one's subscription is live once it has).
      const heard = Promise.all(streams.map((s) => s.read((t) => t.includes('"server_id":"probe"'))))
      let done = false
      void heard.then(() => {
        done = true
      })
      while (!done) {
        await admin.publish(`${world.prefix}:events`, JSON.stringify(event))
        await Promise.race([heard, new Promise((resolve) => setTimeout(resolve, 100))])
      }
      // One subscription (one connection) for the five of them.
      expect(await clients()).toBe(before + 1)

      for (const s of streams) s.abort.abort()
      await eventually("the subscription closed after the last stream", async () =>
        (await clients()) === before ? true : undefined,
      )
      server.signalGroup("SIGINT")
      expect(await server.exited).toBe(0)
    } finally {
      admin.disconnect()
      await redis.stop()
    }
  })
})
