import { Effect, Layer, Option } from "effect"
import { isTerminal } from "../domain/ticket.ts"
import { LogoutReason } from "../protocol/messages.ts"
import {
  type CatalogJob,
  jobFitsPeer,
  LeaseLost,
  type LogRow,
  type NewResult,
  type RecordOutcome,
  type ResultRow,
  type SessionOwner,
  Store,
  StoreError,
  type Ticket,
  type TicketState,
  type TokenInfo,
  ticketStateOf,
} from "./Store.ts"

/**
 * The Store kept in process memory, with the same rules as the PostgreSQL one (the contract suite
 * runs against both). Used by fast tests; it keeps nothing across restarts.
 */
export const makeMemoryStore = Effect.sync(() => {
  const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
  const tokens: Array<TokenInfo & { readonly hash: string }> = []
  const catalog = new Map<string, CatalogJob & { enabled: boolean }>()
  const peers = new Map<string, { lastSeenAt: number; os: string | null; distro: string | null }>()
  const log: Array<LogRow> = []
  const tickets = new Map<
    string,
    { -readonly [K in keyof Ticket]: Ticket[K] } & { createdAt: number; closeReason?: string | null }
  >()
  const sessions = new Map<
    string,
    {
      readonly peerId: string
      readonly os: string | null
      readonly distro: string | null
      readonly heartbeats: boolean
      readonly openedAt: number
      ownerId: string
      epoch: number
      leaseUntil: number
      closed: boolean
    }
  >()
  const results = new Map<string, ResultRow>()
  const instances = new Map<
    string,
    { startedAt: number; aliveAt: number; stoppedAt: number | null; beats: number }
  >()
  let sessionKey: Uint8Array | undefined
  let nextTokenId = 1
  let nextLogId = 1
  let nextTicket = 100_000

  const append = (row: Omit<LogRow, "id" | "at">) => log.push({ ...row, id: nextLogId++, at: Date.now() })
  const newestFirst = <A>(rows: ReadonlyArray<A>, limit: number) => rows.slice().reverse().slice(0, limit)
  const isClosed = (sessionId: string | null) =>
    log.some((r) => r.event === "logout" && r.sessionId === sessionId)
  /** A new queued ticket with the next id; returns a copy. */
  const addTicket = (fields: Omit<Ticket, "ticket" | "state" | "attempts" | "deliveredAt">): Ticket => {
    const ticket = {
      ...fields,
      ticket: String(nextTicket++),
      state: "queued" as TicketState,
      attempts: 0,
      deliveredAt: null,
      createdAt: Date.now(),
    }
    tickets.set(ticket.ticket, ticket)
    return copy(ticket)
  }
  const copy = ({ createdAt: _createdAt, ...t }: Ticket & { createdAt: number }): Ticket => ({ ...t })
  const oldestFirst = (a: { ticket: string }, b: { ticket: string }) => Number(a.ticket) - Number(b.ticket)
  const openTicketsWhere = (match: (t: Ticket) => boolean) =>
    [...tickets.values()].filter((t) => !isTerminal(t.state) && match(t)).sort(oldestFirst)
  const openSessionOf = (peerId: string): SessionOwner | undefined => {
    const open = [...sessions].filter(([, s]) => s.peerId === peerId && !s.closed)
    const [sessionId, s] = open.sort(([, a], [, b]) => b.openedAt - a.openedAt)[0] ?? []
    if (sessionId === undefined || s === undefined) return undefined
    return { sessionId, ownerId: s.ownerId, epoch: s.epoch, expired: s.leaseUntil < Date.now() }
  }
  const holds = (sessionId: string, epoch: number) => {
    const s = sessions.get(sessionId)
    return s !== undefined && s.epoch === epoch && !s.closed
  }

  const sessionRows = () => {
    const logouts = new Map(log.filter((r) => r.event === "logout").map((r) => [r.sessionId, r]))
    return log
      .filter((r) => r.event === "login")
      .map((login) => {
        const logout = logouts.get(login.sessionId)
        return {
          peerId: login.peerId!,
          sessionId: login.sessionId!,
          loginAt: login.at,
          logoutAt: logout?.at ?? null,
          durationMs: (logout?.at ?? Date.now()) - login.at,
          logoutReason: logout?.reason ?? null,
          serverId: login.serverId,
        }
      })
  }

  const record = (r: NewResult): Effect.Effect<RecordOutcome, LeaseLost> =>
    Effect.suspend(() => {
      if (!holds(r.sessionId, r.epoch)) {
        return Effect.fail(new LeaseLost({ sessionId: r.sessionId, epoch: r.epoch }))
      }
      const t = tickets.get(r.ticket)
      if (!t) return Effect.succeed("unknown_ticket" as const)
      if (t.peerId !== r.peerId || t.sessionId !== r.sessionId)
        return Effect.succeed("foreign_ticket" as const)
      if (results.has(r.ticket)) return Effect.succeed("duplicate" as const)
      if (isTerminal(t.state)) return Effect.succeed("ticket_closed" as const)
      t.state = ticketStateOf(r.status)
      results.set(r.ticket, {
        ticket: r.ticket,
        peerId: r.peerId,
        jobName: t.name,
        status: r.status,
        exitCode: r.exitCode,
        output: r.output,
        truncated: r.truncated,
        receivedAt: Date.now(),
      })
      return Effect.succeed("recorded" as const)
    })

  return Store.of({
    createToken: ({ name, prefix, hash }) =>
      Effect.sync(() => {
        const info = { tokenId: nextTokenId++, name, prefix, createdAt: Date.now(), revokedAt: null }
        tokens.push({ ...info, hash: hex(hash) })
        return info
      }),
    listTokens: Effect.sync(() => tokens.map(({ hash: _hash, ...info }) => info)),
    revokeToken: (idOrPrefix) =>
      Effect.sync(() => {
        const byId = /^\d+$/.test(idOrPrefix)
        let count = 0
        tokens.forEach((t, i) => {
          const match = byId ? String(t.tokenId) === idOrPrefix : t.prefix === idOrPrefix
          if (match && t.revokedAt === null) {
            tokens[i] = { ...t, revokedAt: Date.now() }
            count++
          }
        })
        return count
      }),
    findActiveToken: (hash) =>
      Effect.sync(() => {
        const wanted = hex(hash)
        const found = tokens.find((t) => t.hash === wanted && t.revokedAt === null)
        return found ? Option.some(found) : Option.none()
      }).pipe(Effect.map(Option.map(({ hash: _hash, ...info }) => info))),

    replaceCatalog: (jobs) =>
      Effect.sync(() => {
        for (const job of catalog.values()) job.enabled = false
        for (const job of jobs) catalog.set(job.job_id, { ...job, enabled: true })
      }),
    jobsFor: (os, distro) =>
      Effect.sync(() =>
        [...catalog.values()]
          .filter((j) => j.enabled && jobFitsPeer(j, { os, distro }))
          .map(({ enabled: _enabled, ...job }) => job),
      ),

    sessionKey: (proposed) =>
      Effect.sync(() => {
        sessionKey ??= proposed
        return sessionKey
      }),
    login: (l) =>
      Effect.sync(() => {
        peers.set(l.peerId, { lastSeenAt: Date.now(), os: l.os, distro: l.distro })
        for (const [sessionId, s] of sessions) {
          if (s.peerId !== l.peerId || s.closed) continue
          s.closed = true
          s.epoch++
          if (!isClosed(sessionId)) {
            append({
              event: "logout",
              peerId: l.peerId,
              sessionId,
              reason: LogoutReason.replaced,
              serverId: l.serverId,
              serverIp: null,
            })
          }
        }
        sessions.set(l.sessionId, {
          peerId: l.peerId,
          os: l.os,
          distro: l.distro,
          heartbeats: l.agentVersion !== null,
          openedAt: Date.now(),
          ownerId: l.serverId,
          epoch: 1,
          leaseUntil: Date.now() + l.leaseMs,
          closed: false,
        })
        append({
          event: "login",
          peerId: l.peerId,
          sessionId: l.sessionId,
          reason: null,
          serverId: l.serverId,
          serverIp: l.serverIp,
        })
        const adopted = openTicketsWhere((t) => t.peerId === l.peerId)
        for (const t of adopted) t.sessionId = l.sessionId
        return { epoch: 1, adopted: adopted.map(copy) }
      }),
    logRejected: ({ peerId, reason, serverId, serverIp }) =>
      Effect.sync(() => append({ event: "rejected", peerId, sessionId: null, reason, serverId, serverIp })),
    logout: ({ peerId, sessionId, epoch, reason, serverId }) =>
      Effect.sync(() => {
        if (!holds(sessionId, epoch) || isClosed(sessionId)) return false
        sessions.get(sessionId)!.closed = true
        append({ event: "logout", peerId, sessionId, reason, serverId, serverIp: null })
        return true
      }),
    logShutdown: ({ serverId, reason }) =>
      Effect.sync(() =>
        append({ event: "shutdown", peerId: null, sessionId: null, reason, serverId, serverIp: null }),
      ),
    instanceAlive: (serverId) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = instances.get(serverId)
        // An instance that had stopped cleanly and says it is alive again has restarted.
        const startedAt = instance === undefined || instance.stoppedAt !== null ? now : instance.startedAt
        instances.set(serverId, {
          startedAt,
          aliveAt: now,
          stoppedAt: null,
          beats: (instance?.beats ?? 0) + 1,
        })
      }),
    instanceStopped: (serverId) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = instances.get(serverId)
        instances.set(serverId, { startedAt: now, aliveAt: now, beats: 0, ...instance, stoppedAt: now })
      }),
    instanceStatus: (serverId) =>
      Effect.sync(() => {
        const instance = instances.get(serverId)
        return instance === undefined
          ? Option.none()
          : Option.some({
              aliveAgoMs: Math.max(0, Date.now() - instance.aliveAt),
              stopped: instance.stoppedAt !== null,
              beat: String(instance.beats),
            })
      }),
    lostInstances: ({ deadAfterMs, byServerId }) =>
      Effect.sync(() => {
        const now = Date.now()
        return [...instances]
          .filter(([id, i]) => id !== byServerId && i.stoppedAt === null && i.aliveAt < now - deadAfterMs)
          .map(([serverId]) => serverId)
          .sort()
      }),
    renewLeases: ({ serverId, leaseMs, sessions: held }) =>
      Effect.sync(() =>
        held
          .filter(
            ({ sessionId, epoch }) =>
              holds(sessionId, epoch) && sessions.get(sessionId)!.ownerId === serverId,
          )
          .map(({ sessionId }) => {
            sessions.get(sessionId)!.leaseUntil = Date.now() + leaseMs
            return sessionId
          }),
      ),
    takeOverSessions: ({ serverId, leaseMs, limit, sessionId: only }) =>
      Effect.sync(() => {
        const now = Date.now()
        const candidates = [...sessions]
          .filter(([id, s]) =>
            s.closed
              ? false
              : only === undefined
                ? s.leaseUntil < now && s.ownerId !== serverId
                : id === only && (s.leaseUntil < now || s.ownerId === serverId),
          )
          .sort(([, a], [, b]) => a.leaseUntil - b.leaseUntil)
          .slice(0, Math.max(0, limit))
        return candidates.map(([sessionId, s]) => {
          const fromServerId = s.ownerId
          s.ownerId = serverId
          s.epoch++
          s.leaseUntil = now + leaseMs
          return {
            sessionId,
            epoch: s.epoch,
            peerId: s.peerId,
            os: s.os,
            distro: s.distro,
            heartbeats: s.heartbeats,
            fromServerId,
            tickets: openTicketsWhere((t) => t.sessionId === sessionId).map(copy),
          }
        })
      }),
    sessionOf: (peerId) => Effect.sync(() => Option.fromNullishOr(openSessionOf(peerId))),

    createTickets: ({ peerId, sessionId, jobs }) =>
      Effect.sync(() =>
        jobs.map((job) =>
          addTicket({
            peerId,
            sessionId,
            jobId: job.job_id,
            name: job.name,
            os: job.os,
            distro: job.distro,
            command: job.command,
            timeoutMs: job.timeout_ms,
          }),
        ),
      ),
    submitTickets: ({ peerId, jobs }) =>
      Effect.suspend(() => {
        const peer = peers.get(peerId)
        if (peer === undefined) {
          return Effect.fail(
            new StoreError({
              operation: "submitTickets",
              message: `no peer ${peerId} has ever registered`,
              kind: "rejected",
            }),
          )
        }
        const owner = openSessionOf(peerId)
        const created = jobs.map((job) =>
          addTicket({
            peerId,
            sessionId: owner?.sessionId ?? null,
            jobId: null,
            name: job.name,
            os: peer.os ?? "",
            distro: peer.distro ?? "",
            command: job.command,
            timeoutMs: job.timeoutMs,
          }),
        )
        return Effect.succeed({ tickets: created, owner })
      }),
    queuedTickets: (sessionId) =>
      Effect.sync(() =>
        [...tickets.values()]
          .filter((t) => t.sessionId === sessionId && t.state === "queued")
          .sort(oldestFirst)
          .map(copy),
      ),
    queuedCounts: (sessionIds) =>
      Effect.sync(() => {
        const wanted = new Set(sessionIds)
        const counts = new Map<string, number>()
        for (const t of tickets.values()) {
          if (t.state === "queued" && t.sessionId !== null && wanted.has(t.sessionId)) {
            counts.set(t.sessionId, (counts.get(t.sessionId) ?? 0) + 1)
          }
        }
        return counts
      }),
    markDelivered: (lease, ids) =>
      Effect.suspend(() => {
        if (!holds(lease.sessionId, lease.epoch)) return Effect.fail(new LeaseLost(lease))
        const marked: Array<Ticket> = []
        for (const id of new Set(ids)) {
          const t = tickets.get(id)
          if (t === undefined || isTerminal(t.state) || t.sessionId !== lease.sessionId) continue
          t.state = "delivered"
          t.attempts++
          t.deliveredAt = Date.now()
          marked.push(copy(t))
        }
        return Effect.succeed(marked)
      }),
    recordResult: (r) => record(r),
    recordResults: (rs) =>
      Effect.forEach(rs, (r) =>
        record(r).pipe(Effect.catchTag("LeaseLost", () => Effect.succeed("lease_lost" as const))),
      ),
    expireTickets: ({ deliveryDeadlineMs, executionSlackMs }) =>
      Effect.sync(() => {
        const now = Date.now()
        let undeliverable = 0
        let timedOut = 0
        for (const t of tickets.values()) {
          if (t.state === "queued" && t.createdAt < now - deliveryDeadlineMs) {
            t.state = "undeliverable"
            undeliverable++
          } else if (
            t.state === "delivered" &&
            (t.deliveredAt ?? now) + 2 * t.timeoutMs + executionSlackMs < now &&
            (t.sessionId === null || sessions.get(t.sessionId)?.closed !== false)
          ) {
            t.state = "timed_out"
            timedOut++
          }
        }
        return { undeliverable, timedOut }
      }),
    closeTickets: (ids, state, reason, peerId) =>
      Effect.sync(() =>
        ids.filter((id) => {
          const t = tickets.get(id)
          if (!t || isTerminal(t.state) || (peerId !== undefined && t.peerId !== peerId)) return false
          t.state = state
          t.closeReason = reason ?? null
          return true
        }),
      ),
    ticketState: (ticket) => Effect.sync(() => Option.fromNullishOr(tickets.get(ticket)?.state)),

    sessions: ({ peerId, limit }) =>
      Effect.sync(() =>
        newestFirst(
          sessionRows().filter((s) => peerId === undefined || s.peerId === peerId),
          limit,
        ),
      ),
    registrationLog: ({ limit }) => Effect.sync(() => newestFirst(log, limit)),
    results: ({ peerId, limit }) =>
      Effect.sync(() =>
        newestFirst(
          [...results.values()].filter((r) => peerId === undefined || r.peerId === peerId),
          limit,
        ),
      ),
  })
})

export const layerMemory: Layer.Layer<Store> = Layer.effect(Store, makeMemoryStore)
