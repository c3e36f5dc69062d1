import { Effect, Layer, Option } from "effect"
import {
  type CatalogJob,
  type LogRow,
  type ResultRow,
  Store,
  TERMINAL_TICKET_STATES,
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
  const peers = new Map<string, { lastSeenAt: number }>()
  const log: Array<LogRow> = []
  const tickets = new Map<string, { -readonly [K in keyof Ticket]: Ticket[K] }>()
  const results = new Map<string, ResultRow>()
  const instances = new Map<string, { startedAt: number; aliveAt: number; stoppedAt: number | null }>()
  let nextTokenId = 1
  let nextLogId = 1
  let nextTicket = 100_000

  const append = (row: Omit<LogRow, "id" | "at">) => log.push({ ...row, id: nextLogId++, at: Date.now() })
  const isTerminal = (state: TicketState) => TERMINAL_TICKET_STATES.includes(state)
  const newestFirst = <A>(rows: ReadonlyArray<A>, limit: number) => rows.slice().reverse().slice(0, limit)
  const isClosed = (sessionId: string | null) =>
    log.some((r) => r.event === "logout" && r.sessionId === sessionId)

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
          .filter((j) => j.enabled && j.os === os && j.distro === distro)
          .map(({ enabled: _enabled, ...job }) => job),
      ),

    login: (l) =>
      Effect.sync(() => {
        peers.set(l.peerId, { lastSeenAt: Date.now() })
        append({
          event: "login",
          peerId: l.peerId,
          sessionId: l.sessionId,
          reason: null,
          serverId: l.serverId,
          serverIp: l.serverIp,
        })
      }),
    logRejected: ({ peerId, reason, serverId, serverIp }) =>
      Effect.sync(() => append({ event: "rejected", peerId, sessionId: null, reason, serverId, serverIp })),
    logout: ({ peerId, sessionId, reason, serverId }) =>
      Effect.sync(() => {
        if (isClosed(sessionId)) return false
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
        instances.set(serverId, { startedAt, aliveAt: now, stoppedAt: null })
      }),
    instanceStopped: (serverId) =>
      Effect.sync(() => {
        const now = Date.now()
        const instance = instances.get(serverId)
        instances.set(serverId, { startedAt: now, aliveAt: now, ...instance, stoppedAt: now })
      }),
    closeSessionsOfLostInstances: ({ deadAfterMs, reason, byServerId }) =>
      Effect.sync(() => {
        const now = Date.now()
        const lost = new Set(
          [...instances]
            .filter(([id, i]) => id !== byServerId && i.stoppedAt === null && i.aliveAt < now - deadAfterMs)
            .map(([serverId]) => serverId),
        )
        const open = log.filter((r) => r.event === "login" && lost.has(r.serverId) && !isClosed(r.sessionId))
        return open.map((login) => {
          const peerId = login.peerId!
          const sessionId = login.sessionId!
          append({ event: "logout", peerId, sessionId, reason, serverId: byServerId, serverIp: null })
          for (const t of tickets.values()) {
            if (t.sessionId === sessionId && !isTerminal(t.state)) t.state = "cancelled"
          }
          return { peerId, sessionId }
        })
      }),
    closedSessions: (sessionIds) => Effect.sync(() => sessionIds.filter((id) => isClosed(id))),

    createTickets: ({ peerId, sessionId, jobs }) =>
      Effect.sync(() =>
        jobs.map((job) => {
          const ticket = {
            ticket: String(nextTicket++),
            peerId,
            sessionId,
            jobId: job.job_id,
            name: job.name,
            os: job.os,
            distro: job.distro,
            command: job.command,
            timeoutMs: job.timeout_ms,
            state: "queued" as TicketState,
          }
          tickets.set(ticket.ticket, ticket)
          return { ...ticket }
        }),
      ),
    markDelivered: (ids) =>
      Effect.sync(() => {
        for (const id of ids) {
          const t = tickets.get(id)
          if (t?.state === "queued") t.state = "delivered"
        }
      }),
    recordResult: (r) =>
      Effect.sync(() => {
        const t = tickets.get(r.ticket)
        if (!t) return "unknown_ticket"
        if (t.peerId !== r.peerId || t.sessionId !== r.sessionId) return "foreign_ticket"
        if (results.has(r.ticket)) return "duplicate"
        if (isTerminal(t.state)) return "ticket_closed"
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
        return "recorded"
      }),
    closeOpenTickets: (sessionId, state) =>
      Effect.sync(() => {
        let count = 0
        for (const t of tickets.values()) {
          if (t.sessionId === sessionId && !isTerminal(t.state)) {
            t.state = state
            count++
          }
        }
        return count
      }),
    closeTickets: (ids, state) =>
      Effect.sync(() =>
        ids.filter((id) => {
          const t = tickets.get(id)
          if (!t || isTerminal(t.state)) return false
          t.state = state
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
